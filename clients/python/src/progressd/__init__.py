"""progressd worker client: coalesced progress updates that never break the job.

    from progressd import Client
    client = Client("http://localhost:8080", token="...")
    with client.job("book-42", total=10) as job:
        for i in range(10):
            job.update(current=i + 1, message=f"chapter {i + 1}")
"""

from ._async import AsyncChild, AsyncClient, AsyncJob
from ._client import TERMINAL_STATUSES, Child, Client, ConflictError, Job, ProgressError, error_value

__all__ = [
    "AsyncChild",
    "AsyncClient",
    "AsyncJob",
    "Child",
    "Client",
    "ConflictError",
    "Job",
    "ProgressError",
    "TERMINAL_STATUSES",
    "error_value",
]
__version__ = "0.1.0"
