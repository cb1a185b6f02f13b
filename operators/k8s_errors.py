"""The errors of the Kubernetes backend, each one line a user can act on (no kubernetes import:
every command can catch them cheaply).

Every API call of ``operators/k8s_backend.py`` is one ``ApiRequest`` (verb, API group, resource,
namespace, name), in the terms of an RBAC rule; ``explain`` turns the server's refusal of one into
a ``KubeApiError`` that names what was refused, to whom, and the rule that would allow it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from operators.pytorchjob import GROUP

RBAC_FILE = "charts/vlm-platform/templates/rbac.yaml"


class JobTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class ApiRequest:
    """One call to the API server, in the terms of an RBAC rule."""

    verb: str
    group: str  # "" for the core API group
    resource: str  # with its subresource: "pods/log"
    namespace: str
    name: str | None = None

    def what(self) -> str:
        kind = f"{self.resource}.{self.group}" if self.group else self.resource
        return f'{kind} "{self.name}"' if self.name else kind

    def rule(self) -> str:
        return f'{{apiGroups: ["{self.group}"], resources: ["{self.resource}"], verbs: ["{self.verb}"]}}'


class KubeApiError(RuntimeError):
    """The API server refused a request, or could not be reached; ``str()`` is one line."""

    def __init__(self, request: ApiRequest, status: int | None, message: str) -> None:
        self.request, self.status = request, status
        super().__init__(message)


def explain(request: ApiRequest, err: Any) -> KubeApiError:
    """The one-line error for a refused request: what, to whom, and how to allow it."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, ValueError):
        body = {}
    reason = body.get("reason") or err.reason or ""
    message = " ".join(str(body.get("message") or err.reason or "").split())
    where = f'{request.verb} {request.what()} in namespace "{request.namespace}"'
    if err.status == 403:
        user = re.search(r'User "([^"]+)"', message)
        who = user.group(1) if user else "the current credentials"
        text = (
            f"Kubernetes refused to {where} for {who} (403 {reason or 'Forbidden'}): add the rule "
            f"{request.rule()} to the Role bound to {who} ({RBAC_FILE})"
        )
    elif err.status == 404 and request.group == GROUP and request.name is None:
        text = (
            f"Kubernetes cannot {where} (404 {reason or 'NotFound'}): the cluster has no "
            f"{request.resource}.{request.group}; install the Kubeflow training operator (its PyTorchJob CRD)"
        )
    else:
        text = f"Kubernetes refused to {where} ({err.status} {reason}): {message}"
    return KubeApiError(request, err.status, text)


class KubeConfigError(RuntimeError):
    """No credentials to reach a cluster; ``str()`` is one line that says where they were looked for."""
