// mqtt.js in Node, driven line by line like tests/data/paho_client.py (the
// same commands, the same report lines), for tests/cross_client.rs: a web
// client that shares no code with the gateway.
//
//     node client.mjs URL CAFILE CLIENT_ID TOKEN 311|5
//
// connects to URL (wss://localhost:PORT/mqtt) trusting CAFILE, with
// username JWT and TOKEN as password, and reports on stdout, one line each:
//
//     CONNACK <code>                    the CONNACK's return/reason code
//     SUBACK <mid> <code>[,<code>...]   granted QoS or failure code per filter
//     PUBLISHED <mid>                   QoS 0 sent, QoS 1 PUBACKed, QoS 2 PUBCOMPed
//     PUBREFUSED <code>                 an MQTT 5 PUBACK/PUBREC with an error code
//     MSG <qos> <retain 0|1> <topic> <payload>
//     DISCONNECTED <code>
//     ERROR <text>
//
// Commands on stdin: `sub <topic> <qos>`, `pub <topic> <qos> <retain 0|1>
// <payload (the rest of the line)>`, `disconnect` (DISCONNECT, then exit).
// At the end of stdin it exits at once, without DISCONNECT.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import mqtt from "mqtt";

const [url, caFile, clientId, token, version] = process.argv.slice(2);
const say = (...words) => process.stdout.write(words.join(" ") + "\n");

const client = mqtt.connect(url, {
  ca: readFileSync(caFile),
  clientId,
  protocolVersion: version === "5" ? 5 : 4,
  username: "JWT",
  password: token,
  reconnectPeriod: 0,
  connectTimeout: 10_000,
  keepalive: 30,
  clean: true,
});
let mid = 0;
client.on("connect", (connack) => say("CONNACK", connack.returnCode ?? connack.reasonCode ?? 0));
client.on("message", (topic, payload, packet) =>
  say("MSG", packet.qos, packet.retain ? 1 : 0, topic, payload.toString()),
);
client.on("error", (err) => {
  // A refused CONNECT: mqtt.js reports it as an error carrying the code.
  if (typeof err.code === "number") say("CONNACK", err.code);
  else say("ERROR", String(err.message ?? err));
});
client.on("disconnect", (packet) => say("DISCONNECTED", packet.reasonCode ?? 0));
client.on("close", () => say("CLOSED"));

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const words = line.split(" ");
  if (words[0] === "sub") {
    const id = ++mid;
    client.subscribe(words[1], { qos: Number(words[2]) }, (err, granted, suback) => {
      // A refused filter comes back as an error, with the SUBACK beside it.
      if (suback?.granted) say("SUBACK", id, suback.granted.join(","));
      else if (err) say("ERROR", String(err.message ?? err));
      else say("SUBACK", id, granted.map((g) => g.qos).join(","));
    });
  } else if (words[0] === "pub") {
    const id = ++mid;
    const payload = words.slice(4).join(" ");
    client.publish(words[1], payload, { qos: Number(words[2]), retain: words[3] === "1" }, (err, packet) => {
      if (err) say("PUBREFUSED", err.code ?? packet?.reasonCode ?? String(err.message ?? err));
      else say("PUBLISHED", id);
    });
  } else if (words[0] === "disconnect") {
    client.end(false, () => process.exit(0));
  } else {
    say("ERROR", "unknown command", JSON.stringify(line));
  }
});
lines.on("close", () => process.exit(0));
