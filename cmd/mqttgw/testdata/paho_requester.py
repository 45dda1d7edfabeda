# A paho-mqtt requester in the 1.6 API that Debian ships: for each
# location it publishes "query:<location>" to REQUEST-TOPIC with
# RESPONSE-TOPIC as Response Topic, a fresh UUID as Correlation Data and
# Content Type text/plain, and prints each answer. It is event-driven
# rather than sleeping: it sends its requests once its response
# subscription is acknowledged and exits when all are answered, or with
# status 1 after 10 s.
#
# TestMosquittoRRAndPythonRequesterAgainstEmbeddedBroker and
# TestWebSocketClient (clients_test.go) run it to completion as
#     python3 -u testdata/paho_requester.py HOST PORT tcp|websockets \
#         REQUEST-TOPIC RESPONSE-TOPIC LOCATION...
# and read its output: "Sent request <uuid>: query:<location>", then per
# answer "Received response for request <uuid>", "Response: <payload>",
# "Content type: <content type>", and at the end
# "Request/Response demo completed". Over websockets it connects to the
# path /mqtt.

import sys
import threading
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes  # paho 1.6: not mqtt.PacketTypes (2.x)

BROKER_HOST = sys.argv[1]
BROKER_PORT = int(sys.argv[2])
TRANSPORT = sys.argv[3]
REQUEST_TOPIC = sys.argv[4]
RESPONSE_TOPIC = sys.argv[5]
LOCATIONS = sys.argv[6:]

# Store pending requests
pending_requests = {}
finished = threading.Event()

def on_connect(client, userdata, flags, reason_code, properties):
    print(f"Connected with reason code: {reason_code}")
    # Subscribe to our response topic
    client.subscribe(RESPONSE_TOPIC, qos=1)

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.value >= 0x80 for rc in reason_codes):
        print(f"subscription refused: {[str(rc) for rc in reason_codes]}", file=sys.stderr)
        sys.exit(1)
    print(f"Subscribed to response topic: {RESPONSE_TOPIC}")
    for location in LOCATIONS:
        send_request(client, location)

def on_message(client, userdata, msg):
    """Handle response messages"""
    # Extract correlation data
    correlation_data = None
    if hasattr(msg, 'properties') and msg.properties:
        correlation_data = msg.properties.CorrelationData

    if correlation_data:
        correlation_id = correlation_data.decode('utf-8')
        if correlation_id in pending_requests:
            print(f"Received response for request {correlation_id}")
            print(f"Response: {msg.payload.decode('utf-8')}")
            print(f"Content type: {getattr(msg.properties, 'ContentType', None)}")
            del pending_requests[correlation_id]
            if not pending_requests:
                finished.set()
        else:
            print(f"Unknown correlation ID: {correlation_id}")

def send_request(client, location):
    """Send temperature query request"""
    # Generate unique correlation ID
    correlation_id = str(uuid.uuid4())

    # Create properties for request
    properties = mqtt.Properties(PacketTypes.PUBLISH)
    properties.ResponseTopic = RESPONSE_TOPIC
    properties.CorrelationData = correlation_id.encode('utf-8')
    properties.ContentType = "text/plain"

    # Registered before the publish: the answer may be quick.
    pending_requests[correlation_id] = location
    payload = f"query:{location}"
    client.publish(
        REQUEST_TOPIC,
        payload,
        qos=1,
        properties=properties
    )
    print(f"Sent request {correlation_id}: {payload}")
    return correlation_id

client = mqtt.Client(
    client_id="requester_" + uuid.uuid4().hex[:8],
    protocol=mqtt.MQTTv5,
    transport=TRANSPORT
)
if TRANSPORT == "websockets":
    client.ws_set_options(path="/mqtt")

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message

client.connect(BROKER_HOST, BROKER_PORT, keepalive=60)
client.loop_start()

if not finished.wait(10):
    print(f"timed out; unanswered: {pending_requests}", file=sys.stderr)
    sys.exit(1)

client.disconnect()
client.loop_stop()
print("Request/Response demo completed")
