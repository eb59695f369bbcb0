#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/) and libFuzzer dictionaries
(fuzz/dict/<target>.dict). Deterministic: run it again after changing a seed and commit
the result. `.venv/bin/python fuzz/make_corpus.py`"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import pycrdt

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fuzzlib  # noqa: E402

from rt import config  # noqa: E402


def write(target: str, seeds: list[bytes]) -> None:
    folder = os.path.join(HERE, "corpus", target)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for i, seed in enumerate(seeds):
        name = f"seed-{i:02d}-{hashlib.sha1(seed).hexdigest()[:10]}"
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(seed)


def dictionary(target: str, tokens: list[str | bytes]) -> None:
    with open(os.path.join(HERE, "dict", f"{target}.dict"), "w") as fh:
        for token in dict.fromkeys(tokens):
            raw = token.encode() if isinstance(token, str) else token
            esc = "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\x{b:02x}"
                          for b in raw)
            fh.write(f'"{esc}"\n')


def yjs_updates() -> list[bytes]:
    """Real updates from pycrdt, one client per document so they integrate anywhere."""
    out: list[bytes] = []

    def record(client: int, build) -> None:
        doc = pycrdt.Doc(client_id=client)
        updates: list[bytes] = []
        doc.observe(lambda event: updates.append(event.update))
        build(doc)
        out.append(doc.get_update())
        out.extend(updates[1:2])

    def text(doc):
        t = doc.get("t", type=pycrdt.Text)
        t += "hello wörld 😀"
        t.insert(5, ",")
        del t[0:2]

    def fmt(doc):
        t = doc.get("t", type=pycrdt.Text)
        t += "bold"
        t.format(0, 4, {"bold": True})
        t.insert_embed(2, {"image": "x.png"})

    def maps(doc):
        m = doc.get("m", type=pycrdt.Map)
        m["a"] = 1
        m["b"] = [1, "x", None, True, 2.5]
        m["c"] = pycrdt.Map({"d": {"e": "f"}})
        del m["a"]

    def arrays(doc):
        a = doc.get("a", type=pycrdt.Array)
        a.extend([1, 2, 3, b"\x00\x01"])
        a.append(pycrdt.Text("inner"))
        del a[0]

    def xml(doc):
        f = doc.get("x", type=pycrdt.XmlFragment)
        el = f.children.append(pycrdt.XmlElement("p", {"class": "c"}))
        el.children.append(pycrdt.XmlText("para"))

    for client, build in enumerate((text, fmt, maps, arrays, xml), start=101):
        record(client, build)
    out.append(b"\x00\x00")  # the empty update y-py sends
    out.append(b"\x00\x01\x65\x01\x00\x01")  # deletes only (of clocks nobody has)
    out.append(out[0][:-3])  # truncated
    return out


def main() -> None:
    os.makedirs(os.path.join(HERE, "dict"), exist_ok=True)
    write("engineio", [
        b"4hello", b"2", b"3probe", b"6", b"5", b"1", b"40", b'42["a",1]', b"bAQIDBA==",
        b"4a\x1e4b\x1ebAQ==\x1e3", "4h\u00e9llo".encode(), b"", b"\xff\xfe", b"b!!",
        b'42["x"]\x1e42["y"]\x1e',
    ])
    dictionary("engineio", ["\x1e", "b", "0", "1", "2", "3", "4", "5", "6", "probe", "=="])

    write("socketio", [
        b"0", b'0{"token":"x"}', b"0/admin,{}", b"1", b"1/admin,", b'2["hello",1]',
        b'21["ack",{"a":1}]', b"3/,5[1]", b'2/x?y=1,["e"]', b'2["connect"]', b"2[]",
        b'4"err"', b'51-["up",{"_placeholder":true,"num":0}]\0\x01\x02',
        b'62-/ns,7[{"_placeholder":true,"num":1},{"_placeholder":true,"num":0}]\0a\0b',
        b'2' + b'[' * 40 + b']' * 40,
    ])
    dictionary("socketio", ['"_placeholder"', '"num"', "true", "-", "/", ",", "[", "]",
                            "{", "}", '""', "null", "/admin", "connect", "disconnect"])

    toks = fuzzlib.tokens()
    update = yjs_updates()[0]
    events = [
        ["user-join", {"auth": {"token": toks[0]}}],
        ["user-join", {"auth": {"token": toks[1]}}],
        ["join-channels", {}],
        ["join-note", {"note_id": "n2"}],
        ["join-note", {"note_id": "n3", "auth": {"token": toks[2]}}],
        ["heartbeat", {}],
        ["usage", {"model": "llama", "chat_id": "x", "action": "generate"}],
        ["events:channel", {"channel_id": "c1", "message_id": "m",
                            "data": {"type": "typing", "data": {"typing": True}}}],
        ["events:channel", {"channel_id": "c1", "data": {"type": "last_read_at"}}],
        ["events:chat", {"chat_id": "chat1", "data": {"type": "last_read_at"}}],
        ["ydoc:document:join", {"document_id": "note:n1", "user_color": "#f00"}],
        ["ydoc:document:join", {"document_id": "scratch:a"}],
        ["ydoc:document:state", {"document_id": "note:n1"}],
        ["ydoc:document:leave", {"document_id": "note:n1"}],
        ["ydoc:awareness:update", {"document_id": "note:n1", "update": [1, 2, 3]}],
        ["ydoc:document:update", {"document_id": "note:n1", "update": list(update),
                                  "data": {"content": {"type": "doc"}}}],
    ]
    seeds = [json.dumps(e).encode() for e in events]
    seeds.append(json.dumps(["ydoc:document:update", {"document_id": "note:n1",
                                                       "update": "$blob"}]).encode()
                 + b"\0" + update)
    write("events", seeds)
    dictionary("events", [f'"{n}"' for n in fuzzlib.EVENTS] + [f'"{k}"' for k in fuzzlib.KEYS]
               + [f'"{i}"' for i in fuzzlib.IDS if i and len(i) < 20]
               + ['"$blob"', "\0", "null", "true", "[", "]", "{", "}", ":", ",", '""'])

    sig_other = fuzzlib.TokenVerifier("another-secret-" + "z" * 64)
    forged = [
        b"", b"a.b.c", b"e30.e30.", toks[3].encode(), toks[2].encode()[:40],
        (fuzzlib.b64url(b'{"alg":"none","typ":"JWT"}') + "." + fuzzlib.b64url(b'{"id":"alice"}')
         + ".").encode(),
        sig_other.issue("alice", None).encode(),
    ]
    signed = [
        b'{"alg":"HS256","typ":"JWT"}\0{"id":"alice"}',
        b'{"alg":"HS256"}\0{"id":"alice","exp":1700000100}',
        b'{"alg":"HS256"}\0{"id":"alice","exp":1600000000}',
        b'{"alg":"HS256"}\0{"id":"alice","nbf":1800000000}',
        b'{"alg":"HS256"}\0{"id":1}',
        b'{"alg":"HS256"}\0{"id":"alice","exp":"soon"}',
        b'{"alg":"HS256","crit":["x"]}\0{"id":"alice"}',
        b'{"alg":"RS256"}\0{"id":"alice"}',
        b'{"alg":"HS512","kid":"k"}\0{"id":"a","exp":1e400}',
    ]
    write("jwt", [b"\0" + t for t in forged] + [bytes([1 + 2 * (i % 4)]) + s
                                                for i, s in enumerate(signed)])
    dictionary("jwt", ['"alg"', '"HS256"', '"RS256"', '"none"', '"id"', '"exp"', '"nbf"',
                       '"typ"', '"JWT"', '"crit"', '"kid"', ".", "\0"])

    with open(os.path.join(HERE, "..", "conf", "rt-appliance.ini"), "rb") as fh:
        shipped = fh.read()
    write("ini", [
        shipped,
        b"[server]\nport = 8080\nhost = 0.0.0.0\n",
        b"[server]\nport = 99999\n",
        b"[auth]\nalgorithms = RS256\n",
        b"[auth]\nsecret_key = " + fuzzlib.SECRET_MARK.encode() + b"x ; comment\n",
        b"[auth]\nsecret_key " + fuzzlib.SECRET_MARK.encode() + b"y\n",
        b"[state]\nmanager = redis\nredis_url = redis://u:" + fuzzlib.SECRET_MARK.encode()
        + b"z@h:6379/0\n",
        b"[server]\ncors_allow_origin = https://a.example, http://b:8080/\n",
        b"\xef\xbb\xbf[limits]\nevents_per_second = 1e3\n",
        b"[nope]\nx = 1\n[server]\nport = 1\nport = 2\n",
        b"[server]\nping_interval = nan\n\0\0RT_SERVER_PORT=70000\n",
        b"\xff\xfe",
        b"[documents]\nnamespaces = note, bad name\n\0\0WEBUI_SECRET_KEY=" + fuzzlib.SECRET_MARK.encode() + b"e\n",
    ])
    names = [o.name for o in config.OPTIONS] + [f"[{s}]" for s in config.SECTIONS]
    env = [n for o in config.OPTIONS for n in o.env]
    dictionary("ini", names + env + ["=", " ;", " #", "\n", "\0\0", "true", "redis://",
                                     "https://", "unix://", fuzzlib.SECRET_MARK])

    prefix = bytes([255, 255, 0, 0])
    write("sse", [
        prefix + b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n',
        prefix + b"event: ping\ndata: 1\r\n\r\n: keep-alive\r\ndata: 2\rdata: 3\r\r",
        prefix + b"\xef\xbb\xbfdata: bom\n\n",
        prefix + b"id: 7\nretry: 1500\ndata: a\ndata: b\n\nid: x\x00y\ndata: c\n\n",
        prefix + b"data: no blank line at the end\n",
        prefix + b"data: unfinished",
        prefix + "data: h\u00e9llo \U0001f600\n\n".encode(),
        prefix + b"data: \xff\xfe bad utf8\n\n",
        bytes([8, 4, 1, 0]) + b"data: a line too long for the limit\n\n",
        bytes([200, 2, 3, 1]) + b"data: 1234567\ndata: 1234567\n\n",
        bytes([255, 255, 1, 0]) + b"data:x\r\n\r\n",
        prefix + b"retry: 12a\nevent\ndata\n\n",
    ])
    dictionary("sse", ["data:", "data: ", "event:", "id:", "retry:", ":", "\r\n", "\r", "\n",
                       "[DONE]", "\xef\xbb\xbf"])

    write("yjs", yjs_updates())

    b64 = __import__("base64").b64encode
    signer = fuzzlib.TokenVerifier(fuzzlib.SECRET)
    forever, forever_pat = signer.issue("alice", None), signer.issue("pat", None)
    update = yjs_updates()[0]
    write("session", [
        b'42["heartbeat",{}]',
        b'421["user-join",{}]\x1e422["join-channels",{}]',
        b'423["ydoc:document:join",{"document_id":"note:n1"}]',
        b'451-["ydoc:document:update",{"document_id":"note:n1","update":'
        b'{"_placeholder":true,"num":0}}]\x1eb' + b64(update),
        b'452-["usage",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]\x1eb'
        + b64(b"a") + b"\x1eb" + b64(b"b"),
        b'451-["x",{"_placeholder":true,"num":0}]\x1e42["heartbeat"]',
        b"41", b"40", b"40/admin,", b"1", b"2", b"3", b"6", b"5",
        b'4310[1]', b'42/nope,["x"]', b'42["connect"]', b"42{}", b"4",
        # NUL first: the first body of a new session
        b'\x0040{"token":"' + forever.encode() + b'"}\x1e42["heartbeat",{}]',
        b'\x0040{"token":"' + forever_pat.encode() + b'"}',
        b'\x0040{"token":5}', b"\x0040", b'\x0042["heartbeat"]', b"\x0040/admin,{}",
        b'\x0040{"token":"' + forever.encode() + b'"}\x1e40',
    ])
    dictionary("session", ["\x1e", "42", "43", "451-", "b", '"_placeholder"', '"num"',
                           "true", "/admin,"] + [f'"{n}"' for n in fuzzlib.EVENTS])


if __name__ == "__main__":
    main()
