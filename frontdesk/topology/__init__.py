"""The docker-compose topology without Docker: each frontdesk service as supervised local processes.

``compose`` reads ``docker-compose.yml`` like Docker Compose; ``localise`` turns a service into a
process's argv and environment (external services replaced by given addresses); ``supervisor``
runs, restarts and stops the processes; ``python -m frontdesk.topology`` is the command line.

    with Topology.from_compose(Path("docker-compose.yml"), {"kafka": "127.0.0.1:9092", ...}) as topo:
        topo.wait_ready(300)
"""

from frontdesk.topology.compose import interpolate, load_compose
from frontdesk.topology.localise import LocalServices
from frontdesk.topology.supervisor import StageProcess, Topology

__all__ = ["LocalServices", "StageProcess", "Topology", "interpolate", "load_compose"]
