"""bridge.codec.filters: candump filter syntax, kernel CAN_RAW filter semantics, packing."""

from __future__ import annotations

import struct
import sys

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bridge.codec import socketcan as sc
from bridge.codec.filters import (
    CAN_INV_FILTER,
    CAN_RAW_FILTER_MAX,
    CanFilter,
    FilterError,
    FilterSet,
    parse_filters,
)
from bridge.errors import ConfigError, ProtocolError

EFF, RTR, ERR = sc.CAN_EFF_FLAG, sc.CAN_RTR_FLAG, sc.CAN_ERR_FLAG
U32 = 0xFFFFFFFF


def raw_frame(can_id: int) -> bytes:
    return sc.pack_can(can_id & U32, b"\x01")


# --------------------------------------------------------------------------------------------
# A second, independent model of the kernel: receiver lists as af_can.c builds them
# (can_rcv_list_find), deliveries as can_rcv_filter makes them, and raw_rcv's join counting.
# It only sees what a socket would be given: kernel_filters(), err_mask and join.


def _kernel_register(can_id: int, mask: int) -> tuple[str, int, int]:
    inv = can_id & CAN_INV_FILTER
    if mask & ERR:
        return "err", 0, mask & sc.CAN_ERR_MASK
    if (mask & EFF) and not (can_id & EFF):
        mask &= sc.CAN_SFF_MASK | EFF | RTR
    can_id &= mask
    if inv:
        return "inv", can_id, mask
    if not mask:
        return "all", can_id, mask
    if (mask & (EFF | RTR)) == (EFF | RTR) and not (can_id & RTR):
        if can_id & EFF:
            if mask == sc.CAN_EFF_MASK | EFF | RTR:
                return "eff", can_id, mask
        elif mask == sc.CAN_SFF_MASK | EFF | RTR:
            return "sff", can_id, mask
    return "fil", can_id, mask


def _kernel_deliveries(receivers: list[tuple[str, int, int]], can_id: int) -> int:
    n = 0
    if can_id & ERR:
        return sum(1 for kind, _rid, mask in receivers if kind == "err" and can_id & mask)
    for kind, rid, mask in receivers:
        hit = {"all": True, "fil": (can_id & mask) == rid, "inv": (can_id & mask) != rid}
        n += hit.get(kind, False)
    if can_id & RTR:
        return n
    for kind, rid, _mask in receivers:
        if can_id & EFF:
            n += kind == "eff" and rid == can_id
        else:
            n += kind == "sff" and rid == (can_id & sc.CAN_SFF_MASK)
    return n


def kernel_delivers(fs: FilterSet, can_id: int) -> bool:
    table = list(struct.iter_unpack("=II", fs.kernel_filters()))
    receivers = [_kernel_register(cid, mask) for cid, mask in table]
    if fs.err_mask & sc.CAN_ERR_MASK:  # raw.c: err_mask &= CAN_ERR_MASK; registered if non-zero
        receivers.append(_kernel_register(0, (fs.err_mask & sc.CAN_ERR_MASK) | ERR))
    hits = _kernel_deliveries(receivers, can_id)
    count = len(table)
    # raw_rcv: first hit delivers unless join && count > 1; later hits deliver when hits == count
    return hits >= (count if fs.join and count > 1 else 1)


# --------------------------------------------------------------------------------------------
# parsing


def test_parse_golden_candump_example():
    fs = parse_filters("123:7FF,400~700,#FFFFFFFF,j")
    assert fs == FilterSet(
        (CanFilter(0x123, 0x7FF), CanFilter(0x400, 0x700, inverted=True)),
        err_mask=0xFFFFFFFF,
        join=True,
    )


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("123:7FF", CanFilter(0x123, 0x7FF)),
        ("123:7ff", CanFilter(0x123, 0x7FF)),
        ("400~7F0", CanFilter(0x400, 0x7F0, inverted=True)),
        ("0:0", CanFilter(0, 0)),
        ("0~0", CanFilter(0, 0, inverted=True)),
        # 8-character id: CAN_EFF_FLAG added (candump.c checks ptr[8] == ':' / '~')
        ("12345678:1FFFFFFF", CanFilter(0x12345678 | EFF, 0x1FFFFFFF)),
        ("92345678:DFFFFFFF", CanFilter(0x92345678, 0xDFFFFFFF)),
        ("00000123:7FF", CanFilter(0x123 | EFF, 0x7FF)),
        ("00000123~7FF", CanFilter(0x123 | EFF, 0x7FF, inverted=True)),
        # only the id length counts, not the mask's
        ("123:00000FFF", CanFilter(0x123, 0xFFF)),
        # 9 characters: no EFF flag
        ("012345678:1FFFFFFF", CanFilter(0x12345678, 0x1FFFFFFF)),
        # CAN_ERR_FLAG is cleared from masks
        ("0:FFFFFFFF", CanFilter(0, 0xDFFFFFFF)),
        ("123:C00007FF", CanFilter(0x123, 0xC00007FF)),
        ("  123:7FF ", CanFilter(0x123, 0x7FF)),
    ],
)
def test_parse_single_filter(spec, expected):
    fs = parse_filters(spec)
    assert fs.filters == (expected,)
    assert fs.err_mask == 0 and fs.join is False


def test_parse_err_mask_join_and_empty():
    assert parse_filters("") == FilterSet()
    assert parse_filters("   ") == FilterSet()
    assert parse_filters("#FF") == FilterSet(err_mask=0xFF)
    assert parse_filters("#1,#80") == FilterSet(err_mask=0x80)  # the last one wins, as in candump
    assert parse_filters("J") == FilterSet(join=True)
    assert parse_filters("j, 1:1 ,j") == FilterSet((CanFilter(1, 1),), join=True)


BAD_SPECS = [
    ("12G:7FF", "12G:7FF", "can_id '12G' is not hexadecimal"),
    ("123", "123", "expected <can_id>:<can_mask>"),
    ("123:", "123:", "can_mask is empty"),
    ("123~", "123~", "can_mask is empty"),
    (":7FF", ":7FF", "can_id is empty"),
    ("123:7FG", "123:7FG", "can_mask '7FG' is not hexadecimal"),
    ("123:7FFxyz", "123:7FFxyz", "not hexadecimal"),
    ("123:7F~F", "123:7F~F", "can_mask '7F~F' is not hexadecimal"),
    ("0x123:7FF", "0x123:7FF", "can_id '0x123' is not hexadecimal"),
    ("-1:7FF", "-1:7FF", "not hexadecimal"),
    ("+1:7FF", "+1:7FF", "not hexadecimal"),
    ("1_2:7FF", "1_2:7FF", "not hexadecimal"),
    ("1 2:7FF", "1 2:7FF", "not hexadecimal"),
    ("123:100000000", "123:100000000", "exceeds 32 bits"),
    ("#", "#", "error mask is empty"),
    ("#12G", "#12G", "error mask '12G' is not hexadecimal"),
    ("#100000000", "#100000000", "exceeds 32 bits"),
    ("junk", "junk", "expected <can_id>:<can_mask>, <can_id>~<can_mask>, #<error_mask> or j"),
    ("jj", "jj", "expected"),
    ("123:7FF,", "", "empty filter"),
    (",123:7FF", "", "empty filter"),
    ("123:7FF,,j", "", "empty filter"),
    ("20000123:7FF", "20000123:7FF", "CAN_INV_FILTER"),
    ("3FFFFFFF~0", "3FFFFFFF~0", "CAN_INV_FILTER"),
]


@pytest.mark.parametrize("spec, token, problem", BAD_SPECS)
def test_parse_errors_name_token_and_expectation(spec, token, problem):
    with pytest.raises(FilterError) as info:
        parse_filters(spec)
    err = info.value
    assert err.token == token
    assert problem in str(err)
    assert repr(token) in str(err)
    assert err.reason == "bad_filter"
    assert isinstance(err, ValueError) and isinstance(err, ConfigError) and isinstance(err, ProtocolError)


def test_parse_rejects_non_str_and_too_many_filters():
    with pytest.raises(FilterError):
        parse_filters(None)  # type: ignore[arg-type]
    ok = ",".join(f"{i:X}:7FF" for i in range(CAN_RAW_FILTER_MAX))
    assert len(parse_filters(ok).filters) == CAN_RAW_FILTER_MAX
    with pytest.raises(FilterError, match="more than 512"):
        parse_filters(ok + ",1:1")


# --------------------------------------------------------------------------------------------
# value validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"can_id": -1, "can_mask": 0},
        {"can_id": 0, "can_mask": 1 << 32},
        {"can_id": 1.0, "can_mask": 0},
        {"can_id": True, "can_mask": 0},
        {"can_id": CAN_INV_FILTER | 1, "can_mask": 0x7FF},
    ],
)
def test_can_filter_validation(kwargs):
    with pytest.raises(FilterError):
        CanFilter(**kwargs)


def test_can_filter_clears_err_flag_in_mask():
    assert CanFilter(0x123, 0xFFFFFFFF).can_mask == 0xDFFFFFFF
    assert CanFilter(0x123, 0xFFFFFFFF) == CanFilter(0x123, 0xDFFFFFFF)


def test_filter_set_validation_and_value_semantics():
    fs = FilterSet([CanFilter(1, 2)], err_mask=3, join=1)  # type: ignore[arg-type]
    assert fs.filters == (CanFilter(1, 2),) and fs.join is True
    assert fs == FilterSet((CanFilter(1, 2),), 3, True)
    assert hash(fs) == hash(FilterSet((CanFilter(1, 2),), 3, True))
    assert fs != FilterSet((CanFilter(1, 2),), 3, False)
    with pytest.raises(FilterError):
        FilterSet(("123:7FF",))  # type: ignore[arg-type]
    with pytest.raises(FilterError):
        FilterSet(err_mask=-1)
    with pytest.raises(FilterError):
        FilterSet(err_mask=1 << 32)
    with pytest.raises(FilterError, match="512"):
        FilterSet(tuple(CanFilter(i, 0x7FF) for i in range(CAN_RAW_FILTER_MAX + 1)))


# --------------------------------------------------------------------------------------------
# kernel semantics tables

MATCH_TABLE = [
    # spec, can_id, passes
    ("", 0x123, True),
    ("", 0x12345678 | EFF, True),
    ("", 0x123 | RTR, True),
    ("", ERR | 0x80, False),  # default socket: no error frames
    ("123:7FF", 0x123, True),
    ("123:7FF", 0x124, False),
    ("123:7FF", 0x123 | EFF, True),  # "including EFF and RTR frames"
    ("123:7FF", 0x123 | RTR, True),
    ("123:7FF", 0x00012123 | EFF, True),  # only the low 11 bits compared
    ("123:7FF", ERR | 0x123, False),
    ("123:C00007FF", 0x123, True),  # "only SFF and non-RTR frames"
    ("123:C00007FF", 0x123 | RTR, False),
    ("123:C00007FF", 0x123 | EFF, False),
    ("92345678:DFFFFFFF", 0x12345678 | EFF, True),  # "only for extended CAN ID 12345678"
    ("92345678:DFFFFFFF", 0x12345678 | EFF | RTR, False),
    ("92345678:DFFFFFFF", 0x678, False),
    ("12345678:1FFFFFFF", 0x12345678 | EFF, True),
    ("12345678:1FFFFFFF", 0x12345678 | EFF | RTR, True),
    ("12345678:1FFFFFFF", 0x12345679 | EFF, False),
    ("400:700", 0x400, True),
    ("400:700", 0x4FF, True),
    ("400:700", 0x500, False),
    ("400~700", 0x400, False),
    ("400~700", 0x4FF, False),
    ("400~700", 0x500, True),
    ("400~700", 0x123, True),
    ("0:0", 0x7FF, True),
    ("0:0", 0x1FFFFFFF | EFF | RTR, True),
    ("0~0", 0x123, False),
    ("0~0", 0x12345678 | EFF, False),
    ("123:7FF,456:7FF", 0x456, True),
    ("123:7FF,456:7FF", 0x789, False),
    # "SFF only" filter: mask has EFF, id has not -> kernel reduces the mask to SFF|EFF|RTR,
    # so id bits 11..28 of a (malformed) SFF frame are ignored
    ("0123:9FFFFFFF", 0x123, True),
    ("0123:9FFFFFFF", 0x00001123, True),
    ("0123:9FFFFFFF", 0x123 | EFF, False),
    ("0123:1FFFFFFF", 0x00001123, False),  # no EFF in the mask: no reduction
    # join: logical AND
    ("100~7FF,200~7FF", 0x100, True),
    ("100~7FF,200~7FF,j", 0x100, False),
    ("100~7FF,200~7FF,j", 0x200, False),
    ("100~7FF,200~7FF,j", 0x300, True),
    ("400:700,80000000:80000000,j", 0x400 | EFF, True),
    ("400:700,80000000:80000000,j", 0x400, False),
    ("400:700,80000000:80000000,j", 0x500 | EFF, False),
    ("j", 0x123, True),
    ("123:7FF,j", 0x123, True),
    ("123:7FF,j", 0x124, False),
    # error frames: class bits & err_mask & CAN_ERR_MASK
    ("#FFFFFFFF", ERR | 0x80, True),
    ("#FFFFFFFF", ERR | 0x04, True),
    ("#FFFFFFFF", ERR, False),  # no class bit at all
    ("#00000004", ERR | 0x04, True),
    ("#00000004", ERR | 0x80, False),
    ("#20000000", ERR | 0x80, False),  # CAN_ERR_FLAG itself is not a class
    ("#FFFFFFFF", 0x123, True),  # no data filter given: kernel default 0:0 stays
    ("0:0", ERR | 0x80, False),
    ("0:FFFFFFFF", ERR | 0x80, False),  # ERR flag cleared from the mask
    ("0~0,#FFFFFFFF", ERR | 0x80, True),  # "log only error frames"
    ("0~0,#FFFFFFFF", 0x123, False),
    ("0:0,#FFFFFFFF", ERR | 0x80, True),  # "error frames and also all data frames"
    ("0:0,#FFFFFFFF", 0x123, True),
    ("123:7FF,#FF,j", ERR | 0x80, True),  # join with one filter: error receiver suffices
    ("123:7FF,456:7FF,#FF,j", ERR | 0x80, False),  # join with >= 2: never reaches the count
    ("123:7FF,456:7FF,#FF", ERR | 0x80, True),
]


@pytest.mark.parametrize("spec, can_id, passes", MATCH_TABLE)
def test_kernel_semantics_table(spec, can_id, passes):
    fs = parse_filters(spec)
    assert fs.matches(can_id) is passes
    assert kernel_delivers(fs, can_id) is passes  # the table also checks the test's model
    if fs.matches_all and not can_id & sc.CAN_ERR_MASK:
        return  # classless error frame under the fast path: see test_fast_path_keeps_...
    assert fs.filter_batch([(raw_frame(can_id), 7)]) == ([(raw_frame(can_id), 7)] if passes else [])


def test_can_filter_matches_single_filter():
    assert CanFilter(0x400, 0x700).matches(0x4AB)
    assert not CanFilter(0x400, 0x700, inverted=True).matches(0x4AB)
    assert CanFilter(0x123, 0x9FFFFFFF).normalized() == (0x123, 0x800007FF)
    assert CanFilter(0x923, 0x7FF).normalized() == (0x123, 0x7FF)


# --------------------------------------------------------------------------------------------
# kernel_filters packing


def test_kernel_filters_packing():
    fs = parse_filters("123:7FF,400~700,12345678:1FFFFFFF,0:FFFFFFFF,#FF,j")
    packed = fs.kernel_filters()
    assert len(packed) == 8 * 4
    assert list(struct.iter_unpack("=II", packed)) == [
        (0x123, 0x7FF),
        (0x400 | CAN_INV_FILTER, 0x700),
        (0x12345678 | EFF, 0x1FFFFFFF),
        (0, 0xDFFFFFFF),
    ]
    # host byte order, exactly as struct can_filter[] in C
    assert int.from_bytes(packed[8:12], sys.byteorder) == 0x20000400
    assert struct.unpack("@II", packed[:8]) == (0x123, 0x7FF)


def test_kernel_filters_default_is_0_0():
    assert FilterSet().kernel_filters() == struct.pack("=II", 0, 0)
    assert parse_filters("#FF,j").kernel_filters() == struct.pack("=II", 0, 0)


# --------------------------------------------------------------------------------------------
# text form


@pytest.mark.parametrize(
    "spec, text",
    [
        ("", ""),
        ("123:7FF,400~700,#FFFFFFFF,j", "123:7FF,400~700,#FFFFFFFF,j"),
        ("1:1", "001:001"),
        ("12345678:1FFFFFFF", "92345678:1FFFFFFF"),
        ("012345678:1FFFFFFF", "012345678:1FFFFFFF"),
        ("40000123:C00007FF", "C0000123:C00007FF"),
        ("040000123:C00007FF", "040000123:C00007FF"),
        ("0:FFFFFFFF", "000:DFFFFFFF"),
        ("J,#0", "j"),
        ("#4", "#00000004"),
    ],
)
def test_str_golden(spec, text):
    assert str(parse_filters(spec)) == text


u32 = st.integers(0, U32)
interesting_ids = st.sampled_from(
    [0, 0x123, 0x7FF, 0x400, 0x12345678, 0x1FFFFFFF, 0x80000123, 0x92345678, 0xC0000123, 0x40000123]
)
interesting_masks = st.sampled_from(
    [
        0,
        0x7FF,
        0x700,
        0x7F0,
        0x1FFFFFFF,
        0xC00007FF,
        0xDFFFFFFF,
        0x9FFFFFFF,
        0x80000000,
        0x40000000,
        0xFFFFFFFF,
        0x800007FF,
    ]
)
filter_ids = st.one_of(interesting_ids, u32).map(lambda v: v & ~CAN_INV_FILTER)
filter_masks = st.one_of(interesting_masks, u32)
can_filters = st.builds(CanFilter, filter_ids, filter_masks, st.booleans())
err_masks = st.one_of(st.sampled_from([0, 0xFFFFFFFF, 0x1FFFFFFF, 0x80, 0x4, 0x20000000]), u32)
filter_sets = st.builds(FilterSet, st.lists(can_filters, max_size=5).map(tuple), err_masks, st.booleans())
flag_sets = st.sampled_from([0, EFF, RTR, EFF | RTR, ERR, ERR | EFF, ERR | RTR])
frame_ids = st.one_of(
    st.builds(lambda i, f: (i | f) & U32, st.one_of(interesting_ids, st.integers(0, 0x7FF)), flag_sets),
    st.builds(lambda i, f: i | f, st.integers(0, sc.CAN_EFF_MASK), flag_sets),
    u32,
)


@given(filter_sets)
def test_str_round_trip(fs):
    assert parse_filters(str(fs)) == fs


@settings(max_examples=600)
@given(filter_sets, st.lists(frame_ids, min_size=1, max_size=8))
def test_matches_equals_kernel_model(fs, can_ids):
    for can_id in can_ids:
        assert fs.matches(can_id) == kernel_delivers(fs, can_id), hex(can_id)


@given(filter_sets, st.lists(frame_ids, max_size=20))
def test_filter_batch_equals_matches(fs, can_ids):
    batch = [(raw_frame(cid), i) for i, cid in enumerate(can_ids)]
    if any(cid & ERR and not cid & sc.CAN_ERR_MASK for cid in can_ids):
        assume(not fs.matches_all)  # the documented fast-path exception, tested separately
    expected = [item for item in batch if fs.matches(struct.unpack_from("=I", item[0])[0])]
    assert fs.filter_batch(batch) == expected
    assert fs.filter_batch(batch) == expected  # second time from the memo


@given(filter_sets, frame_ids)
def test_matches_all_is_never_wrong(fs, can_id):
    if fs.matches_all_data and not can_id & ERR:
        assert fs.matches(can_id)
    if fs.matches_all and (can_id & sc.CAN_ERR_MASK or not can_id & ERR):
        assert fs.matches(can_id)


# --------------------------------------------------------------------------------------------
# filter_batch / matches_all


def test_filter_batch_fast_path_returns_same_object():
    batch = [(raw_frame(0x123), 1), (raw_frame(ERR | 0x80), 2), (raw_frame(0x12345678 | EFF), 3)]
    for spec in ("#FFFFFFFF", "0:0,#1FFFFFFF", "123:7FF,123~7FF,#FFFFFFFF", "0:0,#FFFFFFFF,j"):
        fs = parse_filters(spec)
        assert fs.matches_all, spec
        assert fs.filter_batch(batch) is batch


def test_default_set_drops_error_frames_only():
    fs = FilterSet()
    assert fs.matches_all_data and not fs.matches_all
    batch = [(raw_frame(0x123), 1), (raw_frame(ERR | 0x80), 2), (raw_frame(0x12345678 | EFF), 3)]
    out = fs.filter_batch(batch)
    assert out is not batch
    assert out == [batch[0], batch[2]]
    assert out[0] is batch[0]


@pytest.mark.parametrize(
    "spec, all_data, all_frames",
    [
        ("", True, False),
        ("#FFFFFFFF", True, True),
        ("#1FFFFFFF", True, True),
        ("#0FFFFFFF", True, False),
        ("0:0", True, False),
        ("0:0,#FFFFFFFF", True, True),
        ("123:7FF,123~7FF", True, False),
        ("123:7FF,123~7FF,#FFFFFFFF", True, True),
        ("123:7FF,123~7FF,#FFFFFFFF,j", False, False),
        ("0:0,0:0,#FFFFFFFF,j", True, False),  # join with 2 filters blocks error frames
        ("0:0,#FFFFFFFF,j", True, True),
        ("0~0", False, False),
        ("123:7FF,#FFFFFFFF", False, False),
    ],
)
def test_matches_all_properties(spec, all_data, all_frames):
    fs = parse_filters(spec)
    assert fs.matches_all_data is all_data
    assert fs.matches_all is all_frames


def test_fast_path_keeps_classless_error_frame():
    # documented: an error frame without any class bit is never delivered by the kernel, but the
    # O(1) fast path of a set that passes everything does not look at frames
    fs = parse_filters("#FFFFFFFF")
    assert not fs.matches(ERR)
    batch = [(raw_frame(ERR), 1)]
    assert fs.filter_batch(batch) is batch


def test_filter_batch_many_ids_and_fd_frames():
    fs = parse_filters("400:700")
    batch = [(sc.pack_canfd(i, b"\x00" * 12), i) for i in range(0x800)]
    batch += [(raw_frame(i | EFF), i) for i in range(0, 0x20000, 7)]  # > memo size
    out = fs.filter_batch(batch)
    assert [ts for _raw, ts in out[:0x100]] == list(range(0x400, 0x500))
    assert out == [item for item in batch if (struct.unpack_from("=I", item[0])[0] & 0x700) == 0x400]
    assert len(fs._cache) <= 4096
