#!/usr/bin/env python3
"""An Eclipse paho-mqtt (Python, 1.6) client driven line by line, for
tests/cross_client.rs: a device client that shares no code with the
gateway's codec.

    paho_client.py HOST PORT CAFILE CLIENT_ID TOKEN 311|5 [WILL_TOPIC WILL_PAYLOAD WILL_QOS]

connects over TLS trusting CAFILE (over secure WebSockets on the path in
$PAHO_WS_PATH, when set; presenting the client certificate in
$PAHO_CERTFILE with the key in $PAHO_KEYFILE, when set), with username
JWT and TOKEN as password,
and reports on stdout, one line each:

    CONNACK <code>                    the CONNACK's return/reason code
    SUBACK <mid> <code>[,<code>...]   granted QoS or failure code per filter
    PUBLISHED <mid>                   QoS 0 sent, QoS 1 PUBACKed, QoS 2 PUBCOMPed
    MSG <qos> <retain 0|1> <topic> <payload>
    DISCONNECTED <code>
    ERROR <text>

Commands on stdin:

    sub <topic> <qos>
    pub <topic> <qos> <retain 0|1> <payload (the rest of the line)>
    disconnect                        a clean end: DISCONNECT, then exit

At the end of stdin it exits at once, without DISCONNECT.
"""

import os
import sys
import threading

import paho.mqtt.client as mqtt

_lock = threading.Lock()


def say(*words):
    with _lock:
        sys.stdout.write(" ".join(str(w) for w in words) + "\n")
        sys.stdout.flush()


def code(value):
    """An int from paho's int (3.1.1) or ReasonCodes (5)."""
    return getattr(value, "value", value)


def main():
    host, port, cafile, client_id, token, version = sys.argv[1:7]
    will = sys.argv[7:10]
    v5 = version == "5"
    # PAHO_WS_PATH: MQTT over secure WebSockets on that path (paho offers
    # the subprotocol "mqtt") instead of straight over TLS.
    ws_path = os.environ.get("PAHO_WS_PATH")
    client = mqtt.Client(
        client_id=client_id,
        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=False,
        transport="websockets" if ws_path else "tcp",
    )
    if ws_path:
        client.ws_set_options(path=ws_path)
    # PAHO_CERTFILE and PAHO_KEYFILE: a client certificate for the
    # handshake (for tokens bound to it, RFC 8705).
    client.tls_set(
        ca_certs=cafile,
        certfile=os.environ.get("PAHO_CERTFILE"),
        keyfile=os.environ.get("PAHO_KEYFILE"),
    )
    client.username_pw_set("JWT", token)
    if will:
        client.will_set(will[0], will[1], int(will[2]))

    def on_connect(_client, _userdata, _flags, rc, *_properties):
        say("CONNACK", code(rc))

    def on_subscribe(_client, _userdata, mid, granted, *_properties):
        say("SUBACK", mid, ",".join(str(code(g)) for g in granted))

    def on_publish(_client, _userdata, mid):
        say("PUBLISHED", mid)

    def on_message(_client, _userdata, msg):
        say("MSG", msg.qos, int(msg.retain), msg.topic, msg.payload.decode())

    def on_disconnect(_client, _userdata, rc, *_properties):
        say("DISCONNECTED", code(rc))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect
    try:
        client.connect(host, int(port), keepalive=30)
    except Exception as e:  # noqa: BLE001 - reported to the test as a line
        say("ERROR", repr(e))
        sys.exit(2)
    client.loop_start()

    for line in sys.stdin:
        words = line.rstrip("\n").split(" ", 4)
        if words[0] == "sub":
            client.subscribe(words[1], int(words[2]))
        elif words[0] == "pub":
            topic, qos, retain = words[1], int(words[2]), words[3] == "1"
            payload = words[4] if len(words) > 4 else ""
            client.publish(topic, payload, qos, retain=retain)
        elif words[0] == "disconnect":
            client.disconnect()
            client.loop_stop()
            sys.exit(0)
        else:
            say("ERROR", "unknown command", repr(line))
    # No DISCONNECT: the socket closes with the process.
    os._exit(0)


if __name__ == "__main__":
    main()
