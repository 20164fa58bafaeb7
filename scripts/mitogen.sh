# Sourced by test.sh and lab.sh: run Ansible under Mitogen for Ansible
# (mitogen_linear, pinned in requirements-dev.txt). Each host keeps one Python
# interpreter for the whole run instead of starting one per task, which halves
# an idempotent run over `docker exec` (README.md, Development). The inventory
# and Molecule name the connection `docker` (community.docker.docker), the
# name Mitogen takes over; ansible-playbook run directly, or with
# PAYCORE_MITOGEN=0, uses Ansible's own linear strategy on the same inventory.
if [[ ${PAYCORE_MITOGEN:-1} == 1 ]]; then
    ANSIBLE_STRATEGY_PLUGINS=$("$root/.venv/bin/python" -c \
        'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))')/plugins/strategy
    export ANSIBLE_STRATEGY_PLUGINS ANSIBLE_STRATEGY=mitogen_linear
fi
