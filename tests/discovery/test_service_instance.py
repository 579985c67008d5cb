"""ServiceInstance: validation with clear messages, addresses, and the stored JSON form."""

from __future__ import annotations

import pytest

from interlink.discovery import ServiceInstance


def test_defaults_and_address() -> None:
    """An instance defaults to HTTP with no zone and answers at host:port."""
    inst = ServiceInstance("orders", "o-1", "10.0.0.5", 8080)
    assert (inst.protocol, inst.zone, dict(inst.metadata)) == ("http", None, {})
    assert inst.address == "10.0.0.5:8080"
    assert inst.url == "http://10.0.0.5:8080"


def test_ipv6_address_is_bracketed() -> None:
    """An IPv6 host is bracketed so the address parses back."""
    assert ServiceInstance("orders", "o-1", "::1", 80).address == "[::1]:80"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"service": ""}, "'service' must be a non-empty name"),
        ({"service": "a/b"}, "'service' must be a non-empty name"),
        ({"instance_id": " "}, "'instance_id' must be a non-empty string: ' '"),
        ({"host": ""}, "'host' must be a non-empty host name or address: ''"),
        ({"port": 0}, "'port' must be an integer in [1, 65535]: 0"),
        ({"port": 70000}, "'port' must be an integer in [1, 65535]: 70000"),
        ({"port": True}, "'port' must be an integer in [1, 65535]: True"),
        ({"port": "80"}, "'port' must be an integer in [1, 65535]: '80'"),
        ({"protocol": ""}, "'protocol' must be a non-empty string: ''"),
        ({"zone": ""}, "'zone' must be None or a non-empty string: ''"),
    ],
)
def test_bad_input_raises_value_error_naming_the_field(
    kwargs: dict[str, object], message: str
) -> None:
    """Bad fields fail at construction with the field, the rule and the value."""
    fields: dict[str, object] = {"service": "orders", "instance_id": "o-1", "host": "h", "port": 1}
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        ServiceInstance(**(fields | kwargs))  # type: ignore[arg-type]


def test_metadata_is_a_private_read_only_copy() -> None:
    """Changing the caller's dict later does not change the instance, nor can it be mutated."""
    meta = {"version": "1"}
    inst = ServiceInstance("orders", "o-1", "h", 1, metadata=meta)
    meta["version"] = "2"
    assert inst.metadata["version"] == "1"
    with pytest.raises(TypeError):
        inst.metadata["version"] = "3"  # type: ignore[index]


def test_json_round_trip() -> None:
    """to_json/from_json keep every field."""
    inst = ServiceInstance("orders", "o-1", "h", 9, "grpc", {"v": "2"}, zone="eu-1")
    assert ServiceInstance.from_json(inst.to_json()) == inst


def test_instances_are_hashable() -> None:
    """Instances work as set members and dict keys (metadata is left out of the hash)."""
    a = ServiceInstance("orders", "o-1", "h", 9, metadata={"v": "1"})
    assert len({a, ServiceInstance("orders", "o-1", "h", 9, metadata={"v": "1"})}) == 1


def test_from_json_rejects_non_objects() -> None:
    """A stored value that is not a JSON object is a clear error."""
    with pytest.raises(ValueError, match="must be a JSON object"):
        ServiceInstance.from_json("[1, 2]")
