"""Push-notification webhook URLs: found in every A2A binding, judged by the bundle's rules."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from a2a.types import a2a_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.policy.webhooks import WebhookPolicy, valid_host_pattern
from policy_service.request.model import Malformed
from policy_service.request.push_urls import push_urls_in_grpc, push_urls_in_json

STRICT = WebhookPolicy()
LOCAL = "names a loopback, private, link-local or metadata address"


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/a2a/push",
        "https://hooks.example.com:8443/x?y=1",
        "https://8.8.8.8/",
        "https://[2001:4860:4860::8888]/",
        "https://cafe.be/",  # hex letters, but a name: its last label is not a number
    ],
)
def test_public_https_urls_pass(url: str) -> None:
    assert STRICT.refusal(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.com/", "must use https"),
        ("ftp://hooks.example.com/", "must be an https URL"),
        ("https://127.0.0.1/", LOCAL),
        ("https://[::1]/", LOCAL),
        ("https://169.254.169.254/latest/meta-data", LOCAL),
        ("https://10.0.0.8/", LOCAL),
        ("https://172.16.3.4/", LOCAL),
        ("https://192.168.1.1/", LOCAL),
        ("https://100.64.0.1/", LOCAL),
        ("https://0.0.0.0/", LOCAL),
        ("https://[::ffff:10.0.0.1]/", LOCAL),
        ("https://[64:ff9b::a9fe:a9fe]/", LOCAL),  # NAT64 to the metadata address
        ("https://[2002:a9fe:a9fe::1]/", LOCAL),  # 6to4 likewise
        ("https://[fc00::1]/", LOCAL),
        ("https://2130706433/", LOCAL),  # 127.0.0.1 to WHATWG parsers and inet_aton
        ("https://0x7f.1/", LOCAL),
        ("https://127.1/", LOCAL),
        ("https://017700000001/", LOCAL),
        ("https://localhost/", LOCAL),
        ("https://LOCALHOST./", LOCAL),
        ("https://api.localhost/", LOCAL),
        ("https://metadata.google.internal/", LOCAL),
        ("https://printer.local/", LOCAL),
        ("https://hooks.example.com@10.0.0.1/", "must not carry user information"),
        ("https://%6c%6fcalhost/", "must not percent-encode its host"),
        (
            "https://hooks.example.com\\@10.0.0.1/",
            "must be plain ASCII with no spaces or backslashes",
        ),
        ("https://h\u00f6oks.example.com/", "must be plain ASCII with no spaces or backslashes"),
        ("https://hooks.example.com:99999/", "is not a valid URL"),
        ("https:///nohost", "must name a host"),
        ("https://hooks.example.com/" + "a" * 2100, "is longer than 2048 characters"),
    ],
)
def test_urls_aimed_inside_or_read_two_ways_are_refused(url: str, why: str) -> None:
    assert STRICT.refusal(url) == why


def test_the_bundle_can_allow_http_and_private_hosts() -> None:
    relaxed = WebhookPolicy(allow_http=True, allow_private=True)
    assert relaxed.refusal("http://10.0.0.8:8080/push") is None
    assert relaxed.refusal("http://hooks.example.com@10.0.0.1/") is not None  # still ambiguous


def test_a_host_list_admits_only_its_hosts() -> None:
    listed = WebhookPolicy(hosts=("hooks.example.com", "*.push.example.org"))
    assert listed.refusal("https://hooks.example.com/x") is None
    assert listed.refusal("https://a.push.example.org/x") is None
    assert listed.refusal("https://push.example.org/x") is not None  # "*." is subdomains only
    assert listed.refusal("https://evilpush.example.org/x") is not None
    assert listed.refusal("https://hooks.example.com.evil.net/x") is not None
    # A listed name is still no way into private addresses unless the bundle says so.
    assert WebhookPolicy(hosts=("10.0.0.8",)).refusal("https://10.0.0.8/") == LOCAL


@pytest.mark.parametrize(
    ("pattern", "valid"),
    [("hooks.example.com", True), ("*.example.com", True), ("*", False), ("Hooks.com", False)],
)
def test_host_patterns(pattern: str, valid: bool) -> None:
    assert valid_host_pattern(pattern) is valid


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_spelling_of_a_non_global_ipv4_address_is_refused(number: int) -> None:
    address = ipaddress.IPv4Address(number)
    spellings = [str(address), str(number), hex(number), f"[::ffff:{address}]"]
    for spelling in spellings:
        why = STRICT.refusal(f"https://{spelling}/hook")
        if not address.is_global or address.is_multicast:
            assert why == LOCAL, spelling
        elif spelling != str(address) and not spelling.startswith("["):
            assert why == LOCAL, spelling  # a bare number is an address to other parsers


# -- finding the URLs ------------------------------------------------------------------------


def send_params(url: Any, key: str = "taskPushNotificationConfig") -> dict[str, Any]:
    return {"message": {"parts": []}, "configuration": {key: {"url": url}}}


@pytest.mark.parametrize(
    "key",
    [
        "taskPushNotificationConfig",  # v1.0
        "pushNotificationConfig",  # v0.3
        "task_push_notification_config",  # protobuf JSON takes the proto field name too
        "TASKPUSHNOTIFICATIONCONFIG",  # case-insensitive decoders
    ],
)
def test_send_message_urls_are_found_in_every_spelling(key: str) -> None:
    assert push_urls_in_json("SendMessage", send_params("https://h.example/", key)) == (
        "https://h.example/",
    )


def test_every_candidate_is_collected_so_none_can_hide() -> None:
    params = {
        "configuration": {
            "taskPushNotificationConfig": {"url": "https://good.example/"},
            "task_push_notification_config": {"url": "https://169.254.169.254/"},
        }
    }
    assert set(push_urls_in_json("SendStreamingMessage", params)) == {
        "https://good.example/",
        "https://169.254.169.254/",
    }


def test_create_config_urls_are_found_for_both_versions() -> None:
    v1 = {"taskId": "t1", "url": "https://a.example/"}
    v03 = {"taskId": "t1", "pushNotificationConfig": {"url": "https://b.example/"}}
    assert push_urls_in_json("CreateTaskPushNotificationConfig", v1) == ("https://a.example/",)
    assert push_urls_in_json("CreateTaskPushNotificationConfig", v03) == ("https://b.example/",)
    assert push_urls_in_json("GetTask", v1) == ()


def test_a_url_that_is_not_a_string_is_malformed() -> None:
    found = push_urls_in_json("SendMessage", send_params(["https://a.example/"]))
    assert isinstance(found, Malformed)
    assert found.reason == "invalid_params"


def grpc_body(message: Any, compressed: bool = False) -> bytes:
    payload = message.SerializeToString()
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def test_grpc_send_message_urls_are_read_by_field_number() -> None:
    # Built with the a2a SDK's own types: the field numbers the parser uses are checked
    # against the published schema, not against themselves.
    request = a2a_pb2.SendMessageRequest()
    request.configuration.task_push_notification_config.url = "https://10.0.0.1/push"
    request.message.message_id = "m1"
    assert push_urls_in_grpc("SendMessage", grpc_body(request)) == ("https://10.0.0.1/push",)


def test_grpc_create_config_urls_are_read_by_field_number() -> None:
    config = a2a_pb2.TaskPushNotificationConfig(task_id="t1", url="https://hooks.example/")
    assert push_urls_in_grpc("CreateTaskPushNotificationConfig", grpc_body(config)) == (
        "https://hooks.example/",
    )


def test_a_repeated_message_field_is_followed_every_time() -> None:
    # protobuf merges a message field that occurs twice; a reader that took only the first
    # would vouch for a URL the agent overwrote.
    first, second = a2a_pb2.SendMessageRequest(), a2a_pb2.SendMessageRequest()
    first.configuration.task_push_notification_config.url = "https://good.example/"
    second.configuration.task_push_notification_config.url = "https://127.0.0.1/"
    payload = first.SerializeToString() + second.SerializeToString()
    body = b"\x00" + len(payload).to_bytes(4, "big") + payload
    assert push_urls_in_grpc("SendMessage", body) == ("https://good.example/", "https://127.0.0.1/")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x01\x00\x00\x00\x00", "compressed"),
        (b"\x00\x00\x00\x00\x09abc", "cut short"),
        (b"\x00\x00\x00\x00\x02\x1a\x05", "runs past"),
    ],
)
def test_a_grpc_message_the_gateway_cannot_read_is_refused(body: bytes, why: str) -> None:
    found = push_urls_in_grpc("SendMessage", body)
    assert isinstance(found, Malformed)
    assert found.reason == "push_url_unreadable"
    assert why in found.message


def test_methods_without_a_webhook_read_nothing() -> None:
    assert push_urls_in_grpc("GetTask", b"\x01garbage") == ()
    assert push_urls_in_json("GetTask", json.loads('{"url": 5}')) == ()
