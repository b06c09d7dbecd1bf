"""BinderHub's repository providers: `<provider>/<spec>` in /v2/ and /build/ links.

BinderHub's links name a repository by a provider prefix and a spec in that provider's
own shape; the same links work here for the providers that are git repositories:

- `gh/<owner>/<repo>/<ref>`: GitHub; the ref may contain `/`.
- `gl/<url-escaped group/project>/<ref>`: GitLab (gitlab.com); groups nest, so the
  project's path is one escaped segment (`group%2Fsub%2Fproject`).
- `gist/<user>/<gist id>[/<ref>]`: a GitHub gist, a git repository of its own.
- `git/<url-escaped URL>/<ref>`: any git repository.

Other prefixes BinderHub has (zenodo, figshare, dataverse, ...) are not git: a link
with one is refused, as one with a prefix nobody knows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from binder_lite.web.policy import RefusedError

PROVIDERS = ("gh", "gl", "gist", "git")

_NAME = r"[A-Za-z0-9_.-]+"
_GITLAB_PATH = re.compile(rf"{_NAME}(/{_NAME})+")


class UnknownProviderError(RefusedError):
    """A link's prefix names no provider this service has."""

    def __init__(self, prefix: str) -> None:
        super().__init__(f"No provider found for prefix {prefix}")


@dataclass(frozen=True)
class RepoSpec:
    """One BinderHub spec, understood: which repository, at which ref."""

    provider: str
    spec: str  # as in the link (escaped), without a trailing slash
    url: str  # the repository to fetch
    ref: str  # as asked for: a branch, tag, commit or HEAD

    def ref_url(self, commit: str) -> str:
        """Where people browse the repository at `commit` (BinderHub's binder_ref_url);
        a plain git URL has nowhere better than itself."""
        if self.provider == "gh":
            return f"{self.url}/tree/{commit}"
        if self.provider == "gl":
            return f"{self.url.removesuffix('.git')}/-/tree/{commit}"
        if self.provider == "gist":
            return f"{self.url.removesuffix('.git')}/{commit}"
        return self.url

    def request(self) -> str:
        """The link's path as BinderHub's `binder_request` gives it (no leading /)."""
        return f"v2/{self.provider}/{self.spec}"

    def persistent_request(self, commit: str) -> str:
        """The same link with the ref resolved to `commit`: it launches the same thing
        later (BinderHub's `binder_persistent_request`)."""
        if self.provider in ("gh", "gist"):  # the owner (user) and the repository (gist)
            head = "/".join(self.spec.split("/", 2)[:2])
        else:  # one escaped segment: the URL, or GitLab's project path
            head = self.spec.partition("/")[0]
        return f"v2/{self.provider}/{head}/{quote(commit, safe='')}"


def parse(provider: str, spec: str) -> RepoSpec:
    """BinderHub's `<provider>/<spec>` → the repository and ref; a `RefusedError` (an
    `UnknownProviderError` for the prefix) saying why not."""
    spec = spec.rstrip("/")
    if provider == "gh":
        parts = spec.split("/", 2)
        if len(parts) != 3 or not all(re.fullmatch(_NAME, p) for p in parts[:2]):
            raise RefusedError("GitHub links look like /v2/gh/OWNER/REPO/REF (REF may be HEAD)")
        owner, repo, ref = parts
        return RepoSpec(provider, spec, f"https://github.com/{owner}/{repo}", unquote(ref))
    if provider == "gl":
        escaped, _, ref = spec.partition("/")
        path = unquote(escaped)
        if not _GITLAB_PATH.fullmatch(path) or not ref:
            raise RefusedError(
                "GitLab links look like /v2/gl/GROUP%2FPROJECT/REF (the project's path escaped)"
            )
        return RepoSpec(provider, spec, f"https://gitlab.com/{path}.git", unquote(ref))
    if provider == "gist":
        parts = spec.split("/", 2)
        if len(parts) < 2 or not all(re.fullmatch(_NAME, p) for p in parts[:2]):
            raise RefusedError("gist links look like /v2/gist/USER/GIST-ID/REF")
        ref = unquote(parts[2]) if len(parts) == 3 else "HEAD"
        return RepoSpec(provider, spec, f"https://gist.github.com/{parts[0]}/{parts[1]}.git", ref)
    if provider == "git":
        escaped, _, ref = spec.partition("/")
        if not escaped or not ref:
            raise RefusedError("git links look like /v2/git/<escaped URL>/<ref>")
        return RepoSpec(provider, spec, unquote(escaped), unquote(ref))
    raise UnknownProviderError(provider)
