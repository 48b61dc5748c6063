"""The user's side of the mesh: the async client, its sync facade and the local mesh."""

from mesh.client._async import AsyncClient
from mesh.client._executor import Executor, MeshFuture
from mesh.client._handle import Job
from mesh.client._lifecycle import ClientState
from mesh.client._local import LocalMesh
from mesh.client._records import EnvInfo, JobInfo, NodeInfo
from mesh.client._sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "Executor",
    "Job",
    "JobInfo",
    "LocalMesh",
    "MeshFuture",
    "NodeInfo",
    "ClientState",
]

# Users meet these as ``mesh.X``, the name ``mesh`` exports them by (as httpx's do);
# pickles name them so too.
for _cls in (AsyncClient, Client, EnvInfo, Executor, Job, JobInfo, NodeInfo):
    _cls.__module__ = "mesh"
del _cls
