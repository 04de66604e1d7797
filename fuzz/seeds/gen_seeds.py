#!/usr/bin/env python3
"""Writes the seed inputs under fuzz/seeds/<target>/ (run from anywhere).

Bodies are encoded by hand as bincode 2 `config::standard()` (little-endian,
variable-length integers: < 251 in one byte, else 251/252/253 then u16/u32/u64;
u8 and bool raw; strings and vectors length-prefixed; enum variants as a
varint index), frames per src/protocol/frame.rs (14-byte header, payload,
CRC-32 IEEE big-endian). Command indices follow `Command::ALL` (the order of
the table in src/protocol/command.rs). Regenerate after a protocol change:

    python3 fuzz/seeds/gen_seeds.py
"""

import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

# Command::ALL order, with codes.
COMMANDS = [
    ("hello", 0x0001), ("hello_ack", 0x0002), ("register", 0x0003),
    ("registered", 0x0004), ("login", 0x0005), ("resume", 0x0006),
    ("logged_in", 0x0007), ("logout", 0x0008), ("ping", 0x0009),
    ("pong", 0x000A), ("going_away", 0x000B), ("error", 0x000C),
    ("ok", 0x000D), ("send", 0x0101), ("send_ack", 0x0102),
    ("deliver", 0x0103), ("delivery_ack", 0x0104), ("read_ack", 0x0105),
    ("receipt", 0x0106), ("recall", 0x0107), ("typing", 0x0108),
    ("typing_event", 0x0109), ("sync", 0x0201), ("sync_page", 0x0202),
    ("sync_end", 0x0203), ("history", 0x0204), ("history_page", 0x0205),
    ("conversation_list", 0x0301), ("conversation_list_page", 0x0302),
    ("mark_read", 0x0303), ("set_pinned", 0x0304), ("set_muted", 0x0305),
    ("hide_conversation", 0x0306), ("group_create", 0x0401),
    ("group_join", 0x0402), ("group_quit", 0x0403), ("group_kick", 0x0404),
    ("group_dissolve", 0x0405), ("group_transfer", 0x0406),
    ("group_info_query", 0x0407), ("group_info", 0x0408),
    ("group_members", 0x0409), ("group_members_page", 0x040A),
    ("user_lookup", 0x0501), ("user_list", 0x0502),
    ("presence_subscribe", 0x0503), ("presence_event", 0x0504),
]
INDEX = {name: i for i, (name, _) in enumerate(COMMANDS)}
CODE = dict(COMMANDS)


def v(n):  # varint (u16/u32/u64, lengths, enum indices)
    if n < 251:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfb" + struct.pack("<H", n)
    if n < 1 << 32:
        return b"\xfc" + struct.pack("<I", n)
    return b"\xfd" + struct.pack("<Q", n)


def u8(n):
    return bytes([n])


def b(x):
    return b"\x01" if x else b"\x00"


def s(text):
    raw = text.encode()
    return v(len(raw)) + raw


def by(raw):
    return v(len(raw)) + raw


def f64(x):
    return struct.pack("<d", x)


def btmap(pairs):
    return v(len(pairs)) + b"".join(s(k) + s(val) for k, val in sorted(pairs))


T = 1_700_000_000_000

CONTENTS = {
    "text": v(0) + s("hi"),
    "image": v(1) + s("https://x/i.png") + v(640) + v(480) + v(12345),
    "voice": v(2) + s("https://x/v.ogg") + v(3000) + v(4096),
    "video": v(3) + s("https://x/v.mp4") + v(9000) + v(1280) + v(720) + v(1 << 20) + s("https://x/t.jpg"),
    "file": v(4) + s("https://x/f") + s("a.pdf") + v(99) + s("application/pdf"),
    "location": v(5) + f64(52.52) + f64(13.405) + s("Berlin"),
    "custom": v(6) + s("poll") + by(b"\x00\x01\x02"),
    "recalled": v(7) + v(42),
    "group_event": v(8) + v(0) + v(1) + v(2) + v(2) + v(3),
}


def message(content="text", extras=()):
    return v(7) + v(42) + v(1001) + v(1) + v(99) + v(T) + CONTENTS[content] + btmap(list(extras))


SUMMARY = v(7) + v(0) + v(2) + v(42) + v(40) + v(2) + b(True) + b(False) + b"\x01" + message()

BODIES = [
    ("hello", u8(1) + u8(1) + u8(0) + by(b"\x11" * 16) + s("gust/0.1")),
    ("hello", u8(1) + u8(1) + u8(1) + by(b"\x11" * 16) + s("gust-cli/0.1")),
    ("hello_ack", u8(1) + u8(1) + u8(1) + u8(0) + by(b"\x22" * 16) + v(30_000) + v(1_048_576) + s("gustd/0.1")),
    ("register", s("alice") + s("correct horse")),
    ("registered", v(1)),
    ("login", s("alice") + s("correct horse") + s("phone")),
    ("resume", by(b"\xab" * 32) + s("phone")),
    ("logged_in", v(1) + s("alice") + s("phone") + by(b"\xab" * 32) + v(T)),
    ("logout", b""),
    ("ping", v(5)),
    ("pong", v(5) + v(T)),
    ("going_away", v(0) + v(1000)),
    ("error", v(9) + b(False) + s("no such user")),
    ("ok", b""),
    ("send", v(99) + v(0) + v(2) + CONTENTS["text"] + btmap([("lang", "en")])),
    ("send", v(100) + v(1) + v(7) + CONTENTS["location"] + btmap([])),
    ("send", v(101) + v(1) + v(7) + CONTENTS["video"] + btmap([("a", "b"), ("c", "d")])),
    ("send_ack", v(99) + v(1001) + v(7) + v(42) + v(T)),
    ("deliver", message()),
    ("deliver", message("custom", [("k", "v")])),
    ("delivery_ack", v(7) + v(42)),
    ("read_ack", v(7) + v(42)),
    ("receipt", v(7) + v(2) + v(1) + v(42)),
    ("recall", v(99) + v(7) + v(42)),
    ("typing", v(7) + b(True)),
    ("typing_event", v(7) + v(2) + b(False)),
    ("sync", v(1) + v(7) + v(40) + v(100)),
    ("sync_page", v(3) + message("image") + message("file") + message("group_event")),
    ("sync_end", v(2) + v(7) + v(42) + v(8) + v(3)),
    ("history", v(7) + v(0) + v(42) + v(50)),
    ("history", v(7) + v(3) + v(T) + v(50)),
    ("history_page", v(2) + message("voice") + message("recalled") + b(True)),
    ("conversation_list", v(0) + v(20)),
    ("conversation_list_page", v(2) + SUMMARY + v(8) + v(1) + v(5) + v(5) + v(0) + b(False) + b(True) + b"\x00" + b(False)),
    ("mark_read", v(7) + v(42)),
    ("set_pinned", v(7) + b(True)),
    ("set_muted", v(7) + b(False)),
    ("hide_conversation", v(7)),
    ("group_create", s("friends") + v(3) + v(2) + v(3) + v(300)),
    ("group_join", v(8)),
    ("group_quit", v(8)),
    ("group_kick", v(8) + v(3)),
    ("group_dissolve", v(8)),
    ("group_transfer", v(8) + v(2)),
    ("group_info_query", v(8)),
    ("group_info", v(8) + s("friends") + v(1) + v(3) + v(T) + b(False)),
    ("group_members", v(8) + v(0) + v(100)),
    ("group_members_page", v(3) + v(1) + v(2) + v(3) + b(False)),
    ("user_lookup", v(2) + v(0) + v(2) + v(1) + s("bob")),
    ("user_list", v(1) + v(2) + s("bob") + b(True) + v(T)),
    ("presence_subscribe", v(2) + v(2) + v(3)),
    ("presence_event", v(2) + b(True) + v(T)),
]


def frame(code, request_id, payload, version=1, cipher=0):
    header = bytes([0xA7, 0x47, version, cipher]) + struct.pack(">HII", code, request_id, len(payload))
    body = header + payload
    return body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def write(target, name, data):
    folder = os.path.join(HERE, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    seen = {}
    for name, payload in BODIES:
        n = seen.get(name, 0)
        seen[name] = n + 1
        tag = name if n == 0 else f"{name}_{n}"
        index = INDEX[name]
        # body_decoders: command index, then the payload.
        write("body_decoders", tag, struct.pack(">H", index) + payload)
        # body_grow: index, list size (small: the fuzzer finds the sizes), payload.
        write("body_grow", tag, struct.pack(">HH", index, 100) + payload)
        # roundtrip: index, request id, key seed, flip position, mask, mode, payload.
        flip = (index * 7) % 64
        mode = index & 1
        write("roundtrip", tag, struct.pack(">HIBHBB", index, index + 1, index, flip, 0x01, mode) + payload)

    # frame_decoder: options, four chunk sizes, then a stream of frames.
    bodies = dict(BODIES)
    hello = frame(CODE["hello"], 1, bodies["hello"])
    login = frame(CODE["login"], 2, bodies["login"])
    send = frame(CODE["send"], 3, bodies["send"])
    sync_page = frame(CODE["sync_page"], 4, bodies["sync_page"])
    ping = frame(CODE["ping"], 5, bodies["ping"])
    streams = {
        # one frame, one chunk
        "hello_whole": (0x00, [0, 0, 0, 0], hello),
        # a session's worth of frames split into odd chunks, version enforced
        "session_chunked": (0x01, [1, 7, 13, 64], hello + login + send + sync_page + ping),
        # byte at a time
        "ping_bytewise": (0x01, [1, 1, 1, 1], ping + ping),
        # unknown command code, empty payload
        "unknown_command": (0x01, [14, 4, 0, 0], frame(0x7FFF, 9, b"") + ping),
        # sealed frame (cipher 1, 16-byte tag of zeros): NoCipher refuses it
        "chacha_flagged": (0x01, [20, 0, 0, 0], frame(CODE["ping"], 7, b"\x05" + bytes(16), cipher=1)),
        # version 2 frame, with and without version enforcement
        "version2_enforced": (0x01, [0, 0, 0, 0], frame(CODE["ping"], 1, b"\x05", version=2)),
        "version2_free": (0x00, [3, 0, 0, 0], frame(CODE["ping"], 1, b"\x05", version=2)),
        # payload over the 64-byte limit
        "too_large_64": (0x04, [0, 0, 0, 0], send + sync_page),
        # bad checksum after a good frame
        "bad_crc": (0x01, [5, 0, 0, 0], ping + ping[:-1] + bytes([ping[-1] ^ 0xFF])),
        # reserved flag bits
        "reserved_flags": (0x00, [0, 0, 0, 0], frame(CODE["ping"], 1, b"\x05", cipher=0x10)),
        # TLS client hello start and HTTP: refused at the first byte
        "tls_hello": (0x00, [1, 0, 0, 0], bytes.fromhex("160301020001")),
        "http_get": (0x00, [2, 0, 0, 0], b"GET / HTTP/1.1\r\n\r\n"),
        # a header announcing more than arrives
        "truncated": (0x01, [0, 0, 0, 0], sync_page[: len(sync_page) // 2]),
    }
    for name, (options, chunks, stream) in streams.items():
        write("frame_decoder", name, bytes([options] + chunks) + stream)


if __name__ == "__main__":
    main()
