#!/usr/bin/env python3
"""Records what real MQTT clients send, for fuzz/corpus/mqtt_session/.

A plain TCP listener plays a minimal broker (CONNACK success, PUBACK,
PUBREC/PUBCOMP, SUBACK granting what was asked, PINGRESP) and keeps every
byte the client sends. Each session is saved twice: as it was sent
(selector 0x00, the CONNECT carries the fixed fuzzing token, so the target
authenticates it), and without its CONNECT behind the selector that makes
the target send its own (`capture-*-after-connect`).

Needs mosquitto-clients (`apt-get install -y mosquitto-clients`) and
paho-mqtt (`pip install paho-mqtt`). Run: python3 fuzz/capture_mqtt.py
"""

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_corpus  # noqa: E402

OUT = make_corpus.CORPUS / "mqtt_session"
TOKEN = make_corpus.session_token().decode()


def read_packet(conn, buffer):
    """One packet from buffer+socket: (first byte, body, raw) or None."""
    while True:
        if len(buffer) >= 2:
            length, multiplier, i = 0, 1, 1
            while i < len(buffer) and i <= 4:
                byte = buffer[i]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not byte & 0x80:
                    if len(buffer) >= i + length:
                        raw = bytes(buffer[: i + length])
                        del buffer[: i + length]
                        return raw[0], raw[i:], raw
                    break
        data = conn.recv(65536)
        if not data:
            return None
        buffer.extend(data)


def serve_one(listener, record):
    conn, _ = listener.accept()
    conn.settimeout(3)
    buffer = bytearray()
    level = 4
    try:
        while True:
            packet = read_packet(conn, buffer)
            if packet is None:
                break
            first, body, raw = packet
            record.append(raw)
            kind = first >> 4
            if kind == 1:
                name_len = int.from_bytes(body[:2], "big")
                level = body[2 + name_len]
                conn.sendall(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
            elif kind == 3:
                qos = (first >> 1) & 3
                if qos:
                    topic_len = int.from_bytes(body[:2], "big")
                    pid = body[2 + topic_len: 4 + topic_len]
                    conn.sendall((b"\x40\x02" if qos == 1 else b"\x50\x02") + pid)
            elif kind == 6:
                conn.sendall(b"\x70\x02" + body[:2])
            elif kind == 8:
                pid = body[:2]
                count = 0
                rest = body[2:]
                if level == 5:
                    rest = rest[1 + rest[0]:]  # short property lists only
                while rest:
                    n = int.from_bytes(rest[:2], "big")
                    rest = rest[3 + n:]
                    count += 1
                if level == 5:
                    conn.sendall(bytes([0x90, 3 + count]) + pid + b"\x00" + b"\x01" * count)
                else:
                    conn.sendall(bytes([0x90, 2 + count]) + pid + b"\x01" * count)
            elif kind == 12:
                conn.sendall(b"\xd0\x00")
            elif kind == 14:
                break
    except (socket.timeout, ConnectionError):
        pass
    conn.close()


def capture(name, start_client):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    record = []
    server = threading.Thread(target=serve_one, args=(listener, record))
    server.start()
    start_client(port)
    server.join(10)
    listener.close()
    if not record:
        print(f"{name}: nothing captured", file=sys.stderr)
        return
    whole = b"".join(record)
    level = 4
    if record[0][0] >> 4 == 1:
        body_start = 2
        while record[0][body_start - 1] & 0x80:
            body_start += 1
        name_len = int.from_bytes(record[0][body_start: body_start + 2], "big")
        level = record[0][body_start + 2 + name_len]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"capture-{name}").write_bytes(b"\x00" + whole)
    selector = {3: 0x01, 4: 0x03, 5: 0x05}.get(level, 0x03)
    (OUT / f"capture-{name}-after-connect").write_bytes(bytes([selector]) + b"".join(record[1:]))
    print(f"{name}: {len(record)} packets, {len(whole)} bytes, level {level}")


def mosquitto(tool, *args):
    def start(port):
        subprocess.run([tool, "-h", "127.0.0.1", "-p", str(port), "-u", "JWT", "-P", TOKEN, *args],
                       timeout=15, capture_output=True)
    return start


def paho(protocol, qos2=True):
    def start(port):
        import paho.mqtt.client as mqtt
        kwargs = {"protocol": protocol, "client_id": f"paho-{protocol}"}
        if protocol == mqtt.MQTTv5:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, **kwargs)
        else:
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, clean_session=True, **kwargs)
        client.username_pw_set("JWT", TOKEN)
        client.will_set("fleet/fuzz-device/status", "offline", qos=1, retain=True)
        client.connect("127.0.0.1", port, keepalive=30)
        client.loop_start()
        time.sleep(0.3)
        client.subscribe([("devices/fuzz-device/#", 1), ("fleet/+/status", 2)])
        client.publish("fleet/fuzz-device/status", "online", qos=1, retain=True)
        client.publish("devices/fuzz-device/telemetry", b'{"t":21.5,"rh":40}', qos=0)
        if qos2:
            client.publish("up", b"\x00\x01\x02", qos=2)
        client.publish("elsewhere/denied", "x", qos=1)
        client.unsubscribe("fleet/+/status")
        time.sleep(0.5)
        client.disconnect()
        client.loop_stop()
    return start


def main():
    for version, tag in [("mqttv31", "v31"), ("mqttv311", "v311"), ("mqttv5", "v5")]:
        capture(f"mosquitto_pub-{tag}-qos1", mosquitto(
            "mosquitto_pub", "-V", version, "-i", f"mosq-{tag}", "-q", "1",
            "-t", "devices/fuzz-device/telemetry", "-m", '{"temp":21.5}'))
        capture(f"mosquitto_pub-{tag}-qos2-retain-will", mosquitto(
            "mosquitto_pub", "-V", version, "-i", f"mosq-{tag}", "-q", "2", "-r",
            "--will-topic", "fleet/fuzz-device/status", "--will-payload", "gone", "--will-retain",
            "-t", "fleet/fuzz-device/status", "-m", "online"))
        capture(f"mosquitto_sub-{tag}", mosquitto(
            "mosquitto_sub", "-V", version, "-i", f"mosq-sub-{tag}", "-q", "1",
            "-t", "devices/fuzz-device/#", "-t", "fleet/+/status", "-C", "1", "-W", "1"))
    capture("mosquitto_pub-v5-properties", mosquitto(
        "mosquitto_pub", "-V", "mqttv5", "-i", "mosq-props", "-q", "1",
        "-D", "connect", "session-expiry-interval", "60",
        "-D", "connect", "receive-maximum", "10",
        "-D", "publish", "message-expiry-interval", "30",
        "-D", "publish", "content-type", "application/json",
        "-D", "publish", "user-property", "site", "berlin",
        "-D", "publish", "topic-alias", "1",
        "-t", "devices/fuzz-device/telemetry", "-m", '{"temp":22}'))
    import paho.mqtt.client as mqtt
    capture("paho-v31", paho(mqtt.MQTTv31))
    capture("paho-v311", paho(mqtt.MQTTv311))
    capture("paho-v5", paho(mqtt.MQTTv5))


if __name__ == "__main__":
    main()
