"""The user's side of the mesh: the async client, its sync facade and the local mesh."""

from mesh.client._async import AsyncClient, JobInfo, NodeInfo
from mesh.client._executor import Executor, MeshFuture
from mesh.client._handle import Job
from mesh.client._local import LocalMesh
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
]
