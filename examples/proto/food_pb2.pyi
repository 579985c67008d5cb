from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MenuRequest(_message.Message):
    __slots__ = ("restaurant_id",)
    RESTAURANT_ID_FIELD_NUMBER: _ClassVar[int]
    restaurant_id: str
    def __init__(self, restaurant_id: _Optional[str] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "name", "price_cents")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    price_cents: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., price_cents: _Optional[int] = ...) -> None: ...

class Menu(_message.Message):
    __slots__ = ("restaurant_id", "items")
    RESTAURANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    restaurant_id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    def __init__(self, restaurant_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ...) -> None: ...

class QuoteRequest(_message.Message):
    __slots__ = ("restaurant_id", "item_ids")
    RESTAURANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    restaurant_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, restaurant_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PriceQuote(_message.Message):
    __slots__ = ("total_cents", "currency")
    TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    total_cents: int
    currency: str
    def __init__(self, total_cents: _Optional[int] = ..., currency: _Optional[str] = ...) -> None: ...

class OrderRequest(_message.Message):
    __slots__ = ("restaurant_id", "item_ids")
    RESTAURANT_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    restaurant_id: str
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, restaurant_id: _Optional[str] = ..., item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Order(_message.Message):
    __slots__ = ("order_id", "total_cents")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    total_cents: int
    def __init__(self, order_id: _Optional[str] = ..., total_cents: _Optional[int] = ...) -> None: ...
