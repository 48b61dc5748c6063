"""The user's side of the mesh: the async client, its sync facade and the local mesh."""

from client._async import AsyncClient, JobInfo, NodeInfo
from client._executor import Executor, MeshFuture
from client._handle import Job
from client._local import LocalMesh
from client._sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "Executor",
    "Job",
    "JobInfo",
    "LocalMesh",
    "MeshFuture",
    "NodeInfo",
]
