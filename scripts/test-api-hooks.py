"""Schemathesis hooks for scripts/test-api.sh: data to test against, and a live token for every case.

At load, two users (the tester and a peer) are signed up, and the tester makes a group and a
direct chat with the peer, sends messages and reacts, so that small ids name things that exist.
Each test case then logs the tester in afresh: some operations end sessions (logging out, ending
every session, DELETE /api/sessions/{id} with a generated id that may be the current one), and a
token shared between cases would leave every later case testing only the 401.
"""

import json
import os
import urllib.request

import schemathesis

API = os.environ["API_URL"]
PASSWORD = "schemathesis password"
TESTER = {"username": "tester", "email": "tester@example.com", "password": PASSWORD}
PEER = {"username": "peer", "email": "peer@example.com", "password": PASSWORD}


def call(method, path, body=None, token=None):
    """One request to the server under test; any status but 2xx stops the run before it starts."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(API + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text else None


def log_in(user):
    return call("POST", "/api/sessions", {"login": user["username"], "password": PASSWORD})["token"]


def seed():
    tester_id = call("POST", "/api/users", TESTER)["id"]
    peer_id = call("POST", "/api/users", PEER)["id"]
    tester, peer = log_in(TESTER), log_in(PEER)
    group = call("POST", "/api/chats", {"is_group": True, "title": "seeded", "member_ids": [peer_id]}, tester)["id"]
    direct = call("POST", "/api/chats", {"is_group": False, "member_ids": [peer_id]}, tester)["id"]
    for chat, token in [(group, tester), (group, peer), (direct, tester), (direct, peer)]:
        sent = call("POST", f"/api/chats/{chat}/messages", {"content": "hello lunch", "client_id": "seed"}, token)
        call("PUT", f"/api/chats/{chat}/messages/{sent['id']}/reactions/%F0%9F%91%8D", token=token)
        call("POST", f"/api/chats/{chat}/messages", {"content": "a reply", "reply_to_seq": sent["seq"]}, token)
    call("POST", f"/api/chats/{group}/read", {"seq": 3}, peer)
    print(f"seeded: users {tester_id} and {peer_id}, chats {group} and {direct}", flush=True)


seed()


@schemathesis.auth(refresh_interval=None)
class FreshLogin:
    def get(self, case, context):
        return log_in(TESTER)

    def set(self, case, data, context):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"
