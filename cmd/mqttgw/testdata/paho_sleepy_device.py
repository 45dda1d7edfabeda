# A battery device in paho-mqtt (the 1.6 API Debian ships) that keeps a
# persistent session and is mostly asleep:
#
#     python3 -u testdata/paho_sleepy_device.py HOST PORT CLIENT-ID TOPIC subscribe
#         connects with Clean Start 0 and Session Expiry 3600 s, subscribes
#         to TOPIC at QoS 1, prints "subscribed", and disconnects, leaving
#         its session (and the subscription) on the broker.
#     python3 -u testdata/paho_sleepy_device.py HOST PORT CLIENT-ID TOPIC wake
#         reconnects to that session, prints "session present: True|False",
#         and answers each request the broker had queued for it: it prints
#         "received: <payload> expiry=<Message Expiry Interval>" and replies
#         on the Response Topic with the Correlation Data, the user property
#         http-status=201, Content Type application/octet-stream and the
#         payload b"\x00\xff done: " + the request's payload (not UTF-8 on
#         purpose). After 2 s without a request it prints "idle" and exits.
#
# The sleeping-device tests (async_test.go) run it.

import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes  # paho 1.6: not mqtt.PacketTypes (2.x)

HOST, PORT, CLIENT_ID, TOPIC, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]

last_activity = time.monotonic()
lock = threading.Lock()


def on_connect(client, userdata, flags, reason_code, properties):
    if reason_code.value != 0:
        print(f"connect refused: {reason_code}", file=sys.stderr)
        sys.exit(1)
    if MODE == "subscribe":
        client.subscribe(TOPIC, qos=1)
    else:
        print(f"session present: {bool(flags['session present'])}")


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if any(rc.value >= 0x80 for rc in reason_codes):
        print(f"subscription refused: {[str(rc) for rc in reason_codes]}", file=sys.stderr)
        sys.exit(1)
    print("subscribed")
    client.disconnect()


def on_message(client, userdata, msg):
    global last_activity
    with lock:
        last_activity = time.monotonic()
    props = msg.properties
    expiry = getattr(props, "MessageExpiryInterval", None)
    print(f"received: {msg.payload.decode('utf-8', 'replace')} expiry={expiry}")
    reply = mqtt.Properties(PacketTypes.PUBLISH)
    reply.CorrelationData = props.CorrelationData
    reply.ContentType = "application/octet-stream"
    reply.UserProperty = ("http-status", "201")
    client.publish(props.ResponseTopic, b"\x00\xff done: " + msg.payload, qos=1, properties=reply)


connect_props = mqtt.Properties(PacketTypes.CONNECT)
connect_props.SessionExpiryInterval = 3600
client = mqtt.Client(client_id=CLIENT_ID, protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(HOST, PORT, keepalive=30, clean_start=False, properties=connect_props)

if MODE == "subscribe":
    client.loop_forever()
    sys.exit(0)

client.loop_start()
while True:
    time.sleep(0.1)
    with lock:
        quiet = time.monotonic() - last_activity
    if quiet > 2:
        break
print("idle")
# Let the last reply's PUBACK come in before leaving.
time.sleep(0.3)
client.disconnect()
client.loop_stop()
