// An MQTT.js v5 responder that echoes: it subscribes to TOPIC-FILTER at
// QoS 1 and answers every request on its Response Topic with the
// request's payload, Correlation Data, Content Type and user properties,
// at QoS 1.
//
// TestMQTTJSResponder and TestWebSocketClient (clients_test.go) run it as
//     node testdata/mqttjs_echo_responder.js BROKER-URL TOPIC-FILTER
// (mqtt:// or ws://, with NODE_PATH pointing at MQTT.js) and wait for the
// line "subscribed [...]", printed from the SUBSCRIBE callback; it then
// prints one line "request {...}" (JSON) per request. It does not
// reconnect: if MQTT.js loses the connection (for instance because it
// can't parse a packet), the process exits with status 1 and the test
// sees it. Anything on stderr fails TestMQTTJSResponder.

const mqtt = require('mqtt');
const [url, filter] = process.argv.slice(2);

const client = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: 'js-responder-' + Math.random().toString(16).slice(2, 10),
  clean: true,
  reconnectPeriod: 0,
  connectTimeout: 5000,
});

client.on('connect', () => {
  client.subscribe(filter, { qos: 1 }, (err, granted) => {
    if (err || granted.some((g) => g.qos >= 0x80)) {
      console.error('subscribe failed', err ? err.message : JSON.stringify(granted));
      process.exit(1);
    }
    console.log('subscribed ' + JSON.stringify(granted));
  });
});

client.on('message', (topic, payload, packet) => {
  const p = packet.properties || {};
  console.log('request ' + JSON.stringify({
    topic, qos: packet.qos, contentType: p.contentType, userProperties: p.userProperties,
    correlationData: p.correlationData ? p.correlationData.toString() : null,
  }));
  if (!p.responseTopic) {
    console.error('request without a response topic');
    return;
  }
  const props = { correlationData: p.correlationData };
  if (p.contentType !== undefined) props.contentType = p.contentType;
  if (p.userProperties !== undefined) props.userProperties = p.userProperties;
  client.publish(p.responseTopic, payload, { qos: 1, properties: props }, (err) => {
    if (err) console.error('reply failed: ' + err.message);
  });
});

client.on('error', (err) => {
  console.error('error: ' + err.message);
  process.exit(1);
});
client.on('close', () => {
  console.error('connection closed');
  process.exit(1);
});
