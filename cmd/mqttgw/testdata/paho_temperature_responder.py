# The temperature service as a Python user writes it: the twin of
# cmd/temperature-service in paho-mqtt, in the 1.6 API that Debian ships
# (on_connect with flags, rc, properties; no CallbackAPIVersion;
# PacketTypes from paho.mqtt.packettypes, as 1.6's client module does not
# export it). It answers "query:<City>" on service/temperature/query at
# the request's Response Topic, with its Correlation Data and Content Type
# text/plain, and reads the correlation data as UTF-8 text.
#
# TestPythonResponder (clients_test.go) runs it as
#     python3 -u testdata/paho_temperature_responder.py HOST PORT
# and waits for the line "subscribed: ..." (printed once the SUBACK is in,
# so that requests can reach it), then for "Correlation Data: <uuid>" and
# "Sent response to ... (request content type text/plain)".
# A refused subscription exits with status 1.

import random
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes  # paho 1.6: not mqtt.PacketTypes (2.x)

BROKER_HOST = sys.argv[1]
BROKER_PORT = int(sys.argv[2])
REQUEST_TOPIC = "service/temperature/query"

# Simulated temperature data
TEMPERATURE_DATA = {
    "Vienna": 22.5,
    "Berlin": 18.3,
    "London": 15.8,
    "Paris": 20.1
}

def on_connect(client, userdata, flags, reason_code, properties):
    print(f"Connected with reason code: {reason_code}")
    # Subscribe to request topic
    client.subscribe(REQUEST_TOPIC)
    print(f"Subscribing to request topic: {REQUEST_TOPIC}")

def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.value >= 0x80 for rc in reason_codes):
        print(f"subscription refused: {[str(rc) for rc in reason_codes]}", file=sys.stderr)
        sys.exit(1)
    print(f"subscribed: {[str(rc) for rc in reason_codes]}")

def on_message(client, userdata, msg):
    """Handle request messages"""
    print(f"Received request: topic={msg.topic}, payload={msg.payload.decode('utf-8')}")

    # Extract Response Topic and Correlation Data
    response_topic = None
    correlation_data = None
    content_type = None

    if hasattr(msg, 'properties') and msg.properties:
        response_topic = msg.properties.ResponseTopic
        correlation_data = msg.properties.CorrelationData
        content_type = getattr(msg.properties, 'ContentType', None)

    if not response_topic:
        print("No Response Topic - cannot send response")
        return

    # Process request
    payload_str = msg.payload.decode('utf-8')
    if payload_str.startswith("query:"):
        location = payload_str[6:]  # Remove "query:" prefix

        # Get temperature (or use random if not found)
        if location in TEMPERATURE_DATA:
            temperature = TEMPERATURE_DATA[location]
        else:
            temperature = random.uniform(10.0, 30.0)

        response_payload = f"Temperature in {location}: {temperature:.1f}°C"

        # Create response properties
        response_props = mqtt.Properties(PacketTypes.PUBLISH)
        if correlation_data:
            response_props.CorrelationData = correlation_data
        response_props.ContentType = "text/plain"

        # Send response
        client.publish(
            response_topic,
            response_payload,
            qos=1,
            properties=response_props
        )

        print(f"Sent response to {response_topic} (request content type {content_type})")
        if correlation_data:
            print(f"Correlation Data: {correlation_data.decode('utf-8')}")

client = mqtt.Client(
    client_id="responder_service_" + str(random.randrange(1 << 30)),
    protocol=mqtt.MQTTv5
)

client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message

client.connect(BROKER_HOST, BROKER_PORT, keepalive=60)

print("Temperature Service is running...")
client.loop_forever()
