"""The sender's single decision table for Produce errors (sans-IO)."""
import pytest

from aiokprod.errors import ProduceAction, classify_produce_error


@pytest.mark.parametrize("code, idempotent, earlier, expected", [
    (0, True, False, ProduceAction.SUCCEED),
    (46, True, False, ProduceAction.SUCCEED),                # duplicate of a batch already written
    (6, False, False, ProduceAction.REFRESH_AND_RETRY),      # NOT_LEADER_OR_FOLLOWER
    (3, True, False, ProduceAction.REFRESH_AND_RETRY),       # UNKNOWN_TOPIC_OR_PARTITION
    (7, True, False, ProduceAction.RETRY_UNSURE),            # REQUEST_TIMED_OUT: may have been written
    (20, True, False, ProduceAction.RETRY_UNSURE),           # NOT_ENOUGH_REPLICAS_AFTER_APPEND: the same
    (7, False, False, ProduceAction.RETRY),                  # without idempotence a retry is all there is
    (19, True, False, ProduceAction.RETRY),                  # NOT_ENOUGH_REPLICAS
    (59, True, False, ProduceAction.RESET_AND_RETRY),        # UNKNOWN_PRODUCER_ID
    (45, True, True, ProduceAction.RETRY),                   # OUT_OF_ORDER after our own earlier failure
    (45, True, False, ProduceAction.RESET_AND_RETRY),        # OUT_OF_ORDER out of the blue
    (45, False, False, ProduceAction.FAIL),
    (10, True, False, ProduceAction.FAIL),                   # MESSAGE_TOO_LARGE
    (87, True, False, ProduceAction.FAIL),                   # INVALID_RECORD
    (29, True, False, ProduceAction.FAIL),                   # TOPIC_AUTHORIZATION_FAILED
    (9999, True, False, ProduceAction.FAIL),                 # a code newer than our table
])
def test_classify_produce_error(code, idempotent, earlier, expected):
    assert classify_produce_error(code, idempotent=idempotent, earlier_batch_failed=earlier) == expected
