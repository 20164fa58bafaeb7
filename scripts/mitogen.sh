# Sourced by test.sh and lab.sh: run Ansible under Mitogen for Ansible
# (mitogen_linear, pinned in requirements-dev.txt). Each host keeps one Python
# interpreter for the whole run instead of starting one per task: an
# idempotent run over `docker exec` takes about 40% less time and 30% less
# CPU (README.md, Development). The inventory and Molecule name the
# connection `docker` (community.docker.docker), the name Mitogen takes over.
# ansible-playbook run directly, or with PAYCORE_MITOGEN=0, uses Ansible's
# linear strategy on the same inventory.
if [[ ${PAYCORE_MITOGEN:-1} == 1 ]]; then
    ANSIBLE_STRATEGY_PLUGINS=$("$root/.venv/bin/python" -c \
        'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy
    export ANSIBLE_STRATEGY_PLUGINS ANSIBLE_STRATEGY=mitogen_linear
    # Mitogen starts its interpreter on a host within Ansible's connection
    # timeout (10 s): too short for a busy 2-core machine running scenarios
    # side by side.
    export ANSIBLE_TIMEOUT=${ANSIBLE_TIMEOUT:-60}
fi
