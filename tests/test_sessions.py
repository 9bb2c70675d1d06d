import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.data.dataset import Dataset, SideFeature
from recsys.data.sessions import basket_index, make_baskets

H = 3600


def make_ds(users, times, orders=None, items=None, n_items=None) -> Dataset:
    """A Dataset with just the purchase columns that baskets look at."""
    users = np.asarray(users, dtype=np.int32)
    m = len(users)
    items = np.zeros(m, np.int32) if items is None else np.asarray(items, dtype=np.int32)
    n_items = n_items or (int(items.max()) + 1 if m else 1)
    n_users = int(users.max()) + 1 if m else 0
    return Dataset(
        item_ids=np.array([f"i{i}" for i in range(n_items)], dtype=object),
        category=SideFeature.from_raw("category", ["c"] * n_items),
        brand=SideFeature.from_raw("brand", [None] * n_items),
        price=np.full(n_items, np.nan, np.float32),
        in_stock=np.ones(n_items, bool),
        item_created_at=np.zeros(n_items, np.int64),
        purchase_user=users,
        purchase_item=items,
        purchase_time=np.asarray(times, dtype=np.int64),
        purchase_order=np.full(m, -1, np.int64) if orders is None else np.asarray(orders, dtype=np.int64),
        purchase_quantity=np.ones(m, np.int32),
        user_ids=np.array([f"u{u}" for u in range(n_users)], dtype=object),
    )


def test_orders_are_baskets_whatever_their_times():
    ds = make_ds(users=[0, 0, 0, 0], times=[0, 10 * H, 10 * H, 20 * H], orders=[7, 7, 8, 7])
    assert make_baskets(ds).tolist() == [0, 0, 1, 0]


def test_two_orders_in_the_same_second_stay_two_baskets():
    ds = make_ds(users=[0, 0, 0], times=[5, 5, 5], orders=[1, 2, 1])
    assert make_baskets(ds).tolist() == [0, 1, 0]


def test_sessions_cut_only_where_the_gap_exceeds_session_gap():
    times = [0, 100, 100 + H + 1, 100 + 2 * H + 1, 100 + 3 * H + 2]  # gaps: 100, H+1, H, H+1
    ds = make_ds(users=[0] * 5, times=times)
    assert make_baskets(ds, session_gap_s=H).tolist() == [0, 0, 1, 1, 2]
    assert make_baskets(ds, session_gap_s=10 * H).tolist() == [0, 0, 0, 0, 0]


def test_same_user_same_timestamp_is_one_basket_even_with_zero_gap():
    ds = make_ds(users=[0, 0, 0, 0], times=[5, 5, 6, 6])
    assert make_baskets(ds, session_gap_s=0).tolist() == [0, 0, 1, 1]


def test_users_never_share_a_basket():
    ds = make_ds(users=[0, 0, 1, 1, 2], times=[5, 5, 5, 5, 5], orders=[-1, -1, -1, -1, 3])
    assert make_baskets(ds).tolist() == [0, 0, 1, 1, 2]


def test_an_order_id_shared_by_two_users_gives_two_baskets():
    ds = make_ds(users=[0, 1], times=[5, 5], orders=[4, 4])
    assert make_baskets(ds).tolist() == [0, 1]


def test_order_lines_and_free_lines_never_mix():
    # free lines around an order line stay one session; the order is its own basket
    ds = make_ds(users=[0, 0, 0], times=[0, 60, 120], orders=[-1, 9, -1])
    assert make_baskets(ds).tolist() == [0, 1, 0]


def test_ids_are_dense_and_follow_first_line():
    ds = make_ds(users=[0, 0, 0, 1, 1], times=[0, 5 * H, 9 * H, 0, 0], orders=[-1, 2, -1, -1, 1])
    b = make_baskets(ds)
    assert b.tolist() == [0, 1, 2, 3, 4]
    assert b.dtype == np.int64


def test_unsorted_input_is_handled():
    ds = make_ds(users=[1, 0, 1, 0], times=[0, 5 * H, 10, 0])
    b = make_baskets(ds)
    # user 0: times 0 and 5H -> two baskets; user 1: times 0 and 10 -> one
    assert b[3] != b[1] and b[0] == b[2]
    assert sorted(set(b.tolist())) == [0, 1, 2]
    assert b[3] < b[1] < b[0]  # numbered in (user, time) order


def test_empty_and_bad_arguments():
    assert make_baskets(make_ds(users=[], times=[])).shape == (0,)
    with pytest.raises(ValueError, match="session_gap_s"):
        make_baskets(make_ds(users=[0], times=[0]), session_gap_s=-1)


def test_basket_index_orders_lines_by_time_then_line():
    ds = make_ds(users=[0, 0, 0, 1], times=[20, 10, 20, 0], orders=[5, 5, 5, -1], items=[3, 1, 2, 0])
    b = make_baskets(ds)
    index = basket_index(ds, b)
    assert index.n_baskets == 2
    assert index.indptr.tolist() == [0, 3, 4]
    assert index.lines.tolist() == [1, 0, 2, 3]
    assert index.basket_items(0).tolist() == [1, 3, 2]
    assert index.user.tolist() == [0, 1]
    assert index.start_time.tolist() == [10, 0]
    assert index.end_time.tolist() == [20, 0]
    assert index.n_times.tolist() == [2, 1]


def test_basket_index_with_line_mask_keeps_numbering():
    ds = make_ds(users=[0, 0, 1], times=[0, 9 * H, 0])
    b = make_baskets(ds)
    index = basket_index(ds, b, line_mask=np.array([True, False, True]))
    assert index.sizes().tolist() == [1, 0, 1]
    assert index.user.tolist() == [0, -1, 1]
    with pytest.raises(ValueError, match="baskets has shape"):
        basket_index(ds, b[:2])
    with pytest.raises(ValueError, match="line_mask"):
        basket_index(ds, b, line_mask=np.array([True]))


@st.composite
def purchase_tables(draw):
    n = draw(st.integers(0, 60))
    users = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 6 * H), min_size=n, max_size=n))
    orders = draw(st.lists(st.one_of(st.just(-1), st.integers(0, 3)), min_size=n, max_size=n))
    gap = draw(st.sampled_from([0, 60, H]))
    order = np.lexsort((times, users))  # Dataset convention: sorted by (user, time)
    return (np.asarray(users, np.int64)[order], np.asarray(times, np.int64)[order],
            np.asarray(orders, np.int64)[order], gap)


@settings(max_examples=150, deadline=None)
@given(purchase_tables())
def test_basket_properties(table):
    users, times, orders, gap = table
    ds = make_ds(users, times, orders)
    b = make_baskets(ds, session_gap_s=gap)
    n = len(users)
    assert b.shape == (n,)
    assert set(b.tolist()) == set(range(len(set(b.tolist()))))  # dense ids, every line has one
    for basket in set(b.tolist()):
        lines = np.flatnonzero(b == basket)
        assert len(set(users[lines].tolist())) == 1  # never two users
        line_orders = set(orders[lines].tolist())
        assert len(line_orders) == 1  # never an order mixed with another order or with free lines
        if line_orders == {-1}:
            t = np.sort(times[lines])
            assert np.all(np.diff(t) <= gap)  # no gap > session_gap inside a session
    for i in range(n):
        for j in range(i + 1, n):
            if users[i] != users[j]:
                continue
            if orders[i] >= 0 or orders[j] >= 0:
                assert (b[i] == b[j]) == (orders[i] == orders[j])
            elif times[i] == times[j]:
                assert b[i] == b[j]
    # maximal sessions: consecutive free lines of a user within the gap share a basket
    free = np.flatnonzero(orders < 0)
    for a, c in zip(free[:-1], free[1:]):
        if users[a] == users[c] and times[c] - times[a] <= gap:
            assert b[a] == b[c]


@settings(max_examples=60, deadline=None)
@given(purchase_tables(), st.randoms(use_true_random=False))
def test_baskets_do_not_depend_on_line_order(table, rnd):
    users, times, orders, gap = table
    perm = np.arange(len(users))
    rnd.shuffle(perm)
    b = make_baskets(make_ds(users, times, orders), session_gap_s=gap)
    b_shuffled = make_baskets(make_ds(users[perm], times[perm], orders[perm]), session_gap_s=gap)
    # the same partition, up to renaming
    pairs = set(zip(b[perm].tolist(), b_shuffled.tolist()))
    assert len(pairs) == len(set(b.tolist())) == len(set(b_shuffled.tolist()))
