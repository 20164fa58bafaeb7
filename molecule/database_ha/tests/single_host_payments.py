"""Payments taken through the edge while the site still has one database host
(prepare.yml runs this after deploying it): each keyed, each answered 201,
kept with its id and amount in single-host-payments.json in the ephemeral
directory. test_drills.py finds every one of them after the conversion to
Patroni (docs/backup-restore.md, "From one host to two")."""

import json
import sys
import tempfile

from conftest import DATABASE_HOSTS, EPHEMERAL, edge_merchant, reconcile

BEFORE = EPHEMERAL / "single-host-payments.json"
COUNT = 20
# Their own band of amounts, above the drills' (conftest.Merchant) and below
# the review threshold (10 000 000 minor units): the drills count payments by
# amount range.
FIRST_AMOUNT = 9_900_001


def main():
    with tempfile.TemporaryDirectory() as directory:
        merchant = edge_merchant(directory)
        session = merchant.session()
        taken = {}
        for number in range(COUNT):
            call = merchant.pay(session, key=f"single-host-{number}", amount=FIRST_AMOUNT + number)
            if call.status != 201:
                answer = call.status or "no answer"
                sys.exit(f"payment {call.key} on the single-host site: HTTP {answer}")
            taken[call.key] = {"payment": call.payment, "amount": call.amount}
    done = reconcile(DATABASE_HOSTS[0])
    if done.returncode != 0:
        sys.exit(f"reconcile on the single-host site:\n{done.stdout}\n{done.stderr}")
    BEFORE.write_text(json.dumps(taken, indent=2, sort_keys=True))
    print(f"{len(taken)} payments taken on the single-host site: {BEFORE}")


if __name__ == "__main__":
    main()
