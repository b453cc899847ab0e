"""Errors a deployment behind the gateway raises for the gateway to answer: Ray re-raises them at
the caller's DeploymentHandle as a RayTaskError that is also an instance of the same class."""


class ServiceError(Exception):
    """`message` for the client; `param`: the request field at fault, when one is. Read them,
    not str(): across a handle, str() is Ray's traceback."""

    def __init__(self, message: str, param: str | None = None):
        # Both in args: an exception is pickled as its class and args.
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message


class NoIndex(ServiceError):
    """No index of that model and modality under the service's index_dir (a 404)."""


class SearchFailed(ServiceError):
    """An index that cannot answer, e.g. built from another checkpoint's vectors: the service
    is misconfigured (a 500)."""
