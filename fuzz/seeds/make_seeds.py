#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/<target>/: realistic requests, bodies and frames
from docs/api.md, and the hostile probes of tests/it/hostile.rs. Run from anywhere;
`make fuzz` reads the files, this script only remakes them."""

import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
TOKEN = "Bearer " + "a" * 43
JSON = "Content-Type: application/json\r\n"
AUTH = f"Authorization: {TOKEN}\r\n"

BODIES = [
    '{"username": "alice", "email": "alice@example.com", "password": "correct horse battery"}',
    '{"login": "alice", "password": "correct horse battery"}',
    '{"is_group": true, "title": "Team", "member_ids": [2, 3]}',
    '{"is_group": false, "member_ids": [2]}',
    '{"title": "Team (renamed)"}',
    '{"user_id": 4}',
    '{"content": "hello", "client_id": "7f3c9a52-1"}',
    '{"content": "hello, edited"}',
    '{"seq": 42}',
    '{"username": "dave", "email": "dave@example.com", "password": "correct horse"}',
    '{"email": "dave@example.com", "password": "correct horse"}',
    '{"title": "Old style", "user_ids": ["1", "2"], "is_group": true}',
    '{"a": 1, "\\u0061": 2}',
    '{"x": [1, {"c": null, "c": null}]}',
    '{"content": "x\\u0000y", "title": null, "seq": -1, "user_id": 1.5, "is_group": "true"}',
    '{"content": "\\ud83d\\ude00 caf\\u00e9", "n": 18446744073709551615, "f": 1e308, "g": -0.0}',
    '[1, 2]',
    '{"a": 1,}',
    '"just a string"',
    '{"deep": [[[[[[[[{"a": {"b": {"c": []}}}]]]]]]]]}',
]

FRAMES = [
    '{"type": "send", "chat_id": 1, "content": "via ws", "client_id": "w-1"}',
    '{"type": "typing", "chat_id": 1}',
    '{"type": "read", "chat_id": 1, "seq": 4}',
    '{"type": "ping"}',
    '{"type": "read", "chat_id": 1, "seq": -4}',
    '{"type": "send", "chat_id": 1, "content": "   "}',
    '{"type": "ping", "type": "send"}',
    '{"content": "seed protocol"}',
    '{"type": "nope"}',
    'not json',
]


def request(method, path, headers="", body=""):
    length = f"Content-Length: {len(body.encode())}\r\n" if body else ""
    return f"{method} {path} HTTP/1.1\r\nHost: localhost:8080\r\n{headers}{length}\r\n{body}".encode()


def http_seeds():
    hidden = "GET /healthz HTTP/1.1\r\nHost: hidden\r\n\r\n"
    seeds = [
        request("GET", "/healthz", "X-Request-Id: trace-42\r\n"),
        request("GET", "/readyz"),
        request("GET", "/ws"),
        request("POST", "/api/users", JSON, BODIES[0]),
        request("POST", "/api/sessions", JSON, BODIES[1]),
        request("GET", "/api/users/me", AUTH),
        request("DELETE", "/api/sessions/current", AUTH),
        request("GET", "/api/users?q=al&limit=5", AUTH),
        request("POST", "/api/chats", AUTH + JSON, BODIES[2]),
        request("PATCH", "/api/chats/3", AUTH + "Content-Type: application/json; charset=utf-8\r\n", BODIES[4]),
        request("POST", "/api/chats/3/members", AUTH + JSON, BODIES[5]),
        request("DELETE", "/api/chats/3/members/4", AUTH),
        request("POST", "/api/chats/3/messages", AUTH + JSON, BODIES[6]),
        request("GET", "/api/chats/3/messages?before=120&limit=50", AUTH),
        request("PATCH", "/api/chats/3/messages/1", AUTH + JSON, BODIES[7]),
        request("POST", "/api/chats/3/read", AUTH + JSON, BODIES[8]),
        request("GET", "/api/chats/3/events?after=8&limit=100", AUTH),
        request("POST", "/api/ws-tickets", AUTH),
        request("POST", "/user/signup", JSON, BODIES[9]),
        request("POST", "/chat/message", AUTH + JSON, BODIES[11]),
        request("GET", "/chat/messages/1", AUTH + "X-Forwarded-For: 203.0.113.9, 127.0.0.1\r\n"),
        request("PUT", "/api/users/me", AUTH),
        request("POST", "/api/users", "Content-Type: text/plain\r\n", "{}"),
        # pipelined, and HTTP/1.0
        request("GET", "/healthz") + request("GET", "/api/chats", AUTH) + b"GET /readyz HTTP/1.0\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n",
        # the hostile probes
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000000\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551615\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
        b"POST /api/users HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 10000000\r\n\r\n",
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: {len(hidden)}\r\n\r\n{hidden}".encode(),
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}".encode(),
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\n{hidden}".encode(),
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{{}}{hidden}".encode(),
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n{hidden}".encode(),
        b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
        b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n10001\r\n" + b"x" * 0x10001 + b"\r\n0\r\n\r\n" + hidden.encode(),
        b"POST /api/sessions HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: b\r\n" % i for i in range(101)) + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Unfinished: " + b"b" * 1000,
        b"GET http://localhost/healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"\r\n\r\nGET /healthz\r\n\r\n",
    ]
    return seeds


def route_seeds():
    lines = [
        "GET /healthz", "GET /readyz", "GET /ws", "POST /api/users", "GET /api/users?q=al%20ice&limit=5",
        "GET /api/users/me", "GET /api/users/42", "POST /api/sessions", "DELETE /api/sessions/current",
        "DELETE /api/sessions", "POST /api/ws-tickets", "POST /api/chats", "GET /api/chats", "GET /api/chats/3",
        "PATCH /api/chats/3", "POST /api/chats/3/members", "DELETE /api/chats/3/members/4",
        "POST /api/chats/3/messages", "GET /api/chats/3/messages?before=120&after=3&limit=50",
        "PATCH /api/chats/3/messages/1", "DELETE /api/chats/3/messages/1", "POST /api/chats/3/read",
        "GET /api/chats/3/events?after=8&limit=100", "POST /user/signup", "POST /user/login",
        "POST /user/logout", "POST /chat/message", "GET /chat/messages/1", "GET /chat/user",
        "PUT /api/chats/1/messages/2", "GET /api/chats/99999999999999999999", "GET /api/users/+1",
        "GET /ws?ticket=1.1700000000.bm9uY2U.bWFj&chat_id=3", "GET /a?q=%zz%4&q=%00&x", "GET /#frag?x=1",
    ]
    return [line.encode() for line in lines]


def ws_frame(payload, opcode=1, fin=True, mask=b"\0\0\0\0"):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def ws_seeds():
    seeds = [ws_frame(f.encode()) for f in FRAMES]
    seeds.append(b"".join(ws_frame(f.encode()) for f in FRAMES[:4]))
    seeds.append(ws_frame(FRAMES[0].encode(), mask=b"\x12\x34\x56\x78"))
    half = len(FRAMES[0]) // 2
    seeds.append(ws_frame(FRAMES[0][:half].encode(), fin=False) + ws_frame(b"", opcode=9)
                 + ws_frame(FRAMES[0][half:].encode(), opcode=0))
    seeds.append(ws_frame(b"ping me", opcode=9) + ws_frame(b"", opcode=10) + ws_frame(FRAMES[3].encode()))
    seeds.append(ws_frame(struct.pack(">H", 1000) + b"bye", opcode=8) + ws_frame(FRAMES[3].encode()))
    seeds.append(ws_frame(b"\x01\x02", opcode=2))
    seeds.append(ws_frame(b'{"type": "\xff"}'))
    seeds.append(ws_frame(("x" * 70000).encode()))
    seeds.append(b"\x81\xff" + struct.pack(">Q", 1 << 62) + b"\0\0\0\0")
    seeds.append(b"\x81\x04ping")  # unmasked
    return seeds


def write(target, seeds):
    directory = os.path.join(HERE, target)
    os.makedirs(directory, exist_ok=True)
    for seed in seeds:
        with open(os.path.join(directory, hashlib.sha1(seed).hexdigest()[:16]), "wb") as f:
            f.write(seed)


write("http", http_seeds())
write("route", route_seeds())
write("json", [b.encode() for b in BODIES + FRAMES])
write("ws", ws_seeds())
