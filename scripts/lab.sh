#!/usr/bin/env bash
# Brings the local lab up (containers, then the whole system with site.yml) or down.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=scripts/mitogen.sh
source scripts/mitogen.sh
inventory=inventories/lab
secrets=${PAYCORE_LAB_SECRETS_DIR:-/var/lib/paycore-lab/secrets}

case ${1:-} in
    up)
        echo "==> starting the lab hosts"
        ansible-playbook -i "$inventory" playbooks/lab-up.yml
        echo "==> deploying PayCore onto the lab (playbooks/site.yml)"
        install -d -m 0700 "$secrets"
        ansible-playbook -i "$inventory" playbooks/site.yml
        cat <<EOM

The lab is up. From this machine:
  API (through the gateway's TLS edge, published on 127.0.0.1:8443):
    key=\$(sudo cat $secrets/lab_merchant_api_key)
    curl --cacert <(docker exec paycore-gateway cat /etc/nginx/tls/edge.crt) \\
         --resolve paycore.lab:8443:127.0.0.1 -H "Authorization: Bearer \$key" \\
         https://paycore.lab:8443/v1/accounts
  Monitoring (on paycore-ledger1, listening only on its loopback and the tunnel):
    sudo ./paycore lab-ui    # then open http://127.0.0.1:9090 (Prometheus) and :9093 (Alertmanager)
    docker exec paycore-ledger1 curl -s http://127.0.0.1:9090/api/v1/targets   # or from a shell
  Inventory: $inventory (e.g. ansible -i $inventory all -m ping). Remove with: ./paycore lab-down
EOM
        ;;
    down)
        ansible-playbook -i "$inventory" playbooks/lab-down.yml
        ;;
    *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
