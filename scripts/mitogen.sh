# Sourced by test.sh and lab.sh: run Ansible under Mitogen for Ansible
# (mitogen_linear, pinned in requirements-dev.txt). Each host keeps one Python
# interpreter for the whole run instead of starting one per task: an
# idempotent run over `docker exec` takes about 40% less time and 30% less
# CPU (README.md, Development). The inventory and Molecule name the
# connection `docker` (community.docker.docker), the name Mitogen takes over.
# Molecule's own create/destroy playbooks stay on Ansible's linear strategy
# (scripts/mitogen/ansible-playbook). ansible-playbook run directly, or with
# PAYCORE_MITOGEN=0, uses Ansible's linear strategy on the same inventory.
if [[ ${PAYCORE_MITOGEN:-1} == 1 ]]; then
    ANSIBLE_STRATEGY_PLUGINS=$("$root/.venv/bin/python" -c \
        'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy
    PAYCORE_ANSIBLE_PLAYBOOK=$root/.venv/bin/ansible-playbook
    export ANSIBLE_STRATEGY_PLUGINS ANSIBLE_STRATEGY=mitogen_linear PAYCORE_ANSIBLE_PLAYBOOK
    export PATH=$root/scripts/mitogen:$PATH
    # Mitogen starts its interpreter on a host within Ansible's connection
    # timeout (10 s): too short for a busy 2-core machine running scenarios
    # side by side.
    export ANSIBLE_TIMEOUT=${ANSIBLE_TIMEOUT:-60}
fi
