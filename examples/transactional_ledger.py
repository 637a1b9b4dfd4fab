"""A ledger of transfers, each written atomically to two topics: the debit to ``<topic>-debits`` and the
credit to ``<topic>-credits`` in one transaction. A read_committed consumer sees both records of a
transfer or neither. A transfer that turns out to overdraw its account after its debit was sent is aborted:
its debit never becomes visible (still buffered, it fails with ``TransactionAbortedError``; already
written, an ABORT marker hides it) and no credit is written.

The loop around a transaction, as a producer with a ``transactional_id`` wants it:

* ``AbortableError`` (a record failed, a refused partition, a transaction open too long): abort, go on;
* ``FatalError`` (fenced by a newer instance with the same ``transactional_id``, not authorised): stop;
* retriable errors are retried inside the producer; a ``KafkaTimeoutError`` out of commit can be retried.

    python examples/transactional_ledger.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
"""
import json
import sys

from _common import run

from aiokprod import Producer, errors

TRANSFERS = [("alice", "bob", 30), ("bob", "carol", 10), ("carol", "alice", 500), ("alice", "carol", 5)]
OPENING = {"alice": 100, "bob": 20, "carol": 40}


class Overdrawn(Exception):
    pass


async def main(bootstrap: str, topic: str, args) -> None:
    debits, credits = f"{topic}-debits", f"{topic}-credits"
    balances = dict(OPENING)
    async with Producer(bootstrap, transactional_id=f"{topic}-ledger", linger_ms=5) as producer:
        for number, (source, target, amount) in enumerate(TRANSFERS, 1):
            record = json.dumps({"transfer": number, "from": source, "to": target, "amount": amount}).encode()
            try:
                async with producer.transaction():  # commits on success, aborts on any exception
                    await producer.send(debits, record, key=source.encode())
                    if balances[source] < amount:
                        raise Overdrawn(f"{source} has {balances[source]}, cannot pay {amount}")
                    await producer.send(credits, record, key=target.encode())
            except Overdrawn as exc:
                print(f"aborted transfer #{number}: {source} -> {target} {amount} ({exc})")
                continue
            except errors.FatalError as exc:  # fenced or not authorised: nothing more can be written
                print(f"producer can not go on: {exc}")
                raise
            except errors.AbortableError as exc:  # the transaction was aborted; the next one may succeed
                print(f"transfer #{number} failed and was aborted: {exc}")
                continue
            balances[source] -= amount
            balances[target] += amount
            print(f"committed transfer #{number}: {source} -> {target} {amount}")
    print(f"balances {json.dumps(balances, sort_keys=True)}")
    print(f"topics {debits} {credits}")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__))
