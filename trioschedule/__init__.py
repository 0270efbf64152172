"""trioschedule: distributed task scheduling on Trio, with no broker to run.

A :class:`Dispatcher` hands tasks to :class:`Worker` processes that connect
to it over TCP, collects their results and failures, and broadcasts messages
to all of them; :func:`open_client` submits tasks from any other process.
"""

from ._client import Client as Client
from ._client import open_client as open_client
from ._dispatcher.dispatcher import Dispatcher as Dispatcher
from ._errors import AuthenticationError as AuthenticationError
from ._errors import ConnectionClosed as ConnectionClosed
from ._errors import LocalProtocolError as LocalProtocolError
from ._errors import NotLeader as NotLeader
from ._errors import ProtocolError as ProtocolError
from ._errors import QueueFull as QueueFull
from ._errors import Rejected as Rejected
from ._errors import RemoteProtocolError as RemoteProtocolError
from ._errors import StoreError as StoreError
from ._errors import StoreFenced as StoreFenced
from ._errors import TaskCancelled as TaskCancelled
from ._errors import TaskError as TaskError
from ._errors import TaskFailed as TaskFailed
from ._errors import TaskLost as TaskLost
from ._errors import TaskTimeout as TaskTimeout
from ._errors import TriosError as TriosError
from ._errors import UnknownSchedule as UnknownSchedule
from ._errors import UnknownTaskId as UnknownTaskId
from ._handles import TaskHandle as TaskHandle
from ._net.security import client_ssl_context as client_ssl_context
from ._net.security import server_ssl_context as server_ssl_context
from ._peer import Peer as Peer
from ._protocol.messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._protocol.messages import Outcome as Outcome
from ._store.base import MemoryStore as MemoryStore
from ._store.base import Store as Store
from ._store.base import StoredTask as StoredTask
from ._store.sqlite import SQLiteStore as SQLiteStore
from ._store.sqlite import StoreStatistics as StoreStatistics
from ._task import Retry as Retry
from ._task import TaskOptions as TaskOptions
from ._task import task as task
from ._worker import Worker as Worker

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSION",
    "AuthenticationError",
    "Client",
    "ConnectionClosed",
    "Dispatcher",
    "LocalProtocolError",
    "MemoryStore",
    "NotLeader",
    "Outcome",
    "Peer",
    "ProtocolError",
    "QueueFull",
    "Rejected",
    "RemoteProtocolError",
    "Retry",
    "SQLiteStore",
    "Store",
    "StoreError",
    "StoreFenced",
    "StoreStatistics",
    "StoredTask",
    "TaskCancelled",
    "TaskError",
    "TaskFailed",
    "TaskHandle",
    "TaskLost",
    "TaskOptions",
    "TaskTimeout",
    "TriosError",
    "UnknownSchedule",
    "UnknownTaskId",
    "Worker",
    "client_ssl_context",
    "open_client",
    "server_ssl_context",
    "task",
]
