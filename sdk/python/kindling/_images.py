"""``/v1/images``: custom images, a built-in image plus Debian packages and files, built by the server. Requests then
name one as ``image="kindling/NAME"``."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ._bundle import tar_directory
from ._core import seg
from ._errors import KindlingError
from ._types import JsonDict, _str, expect_dict

if TYPE_CHECKING:
    from ._async import _AsyncHttp
    from ._sync import _Http


@dataclass(frozen=True)
class CustomImage:
    """A custom image: its definition, build status (``building``, ``ready``, ``failed``), size and, from
    :meth:`Images.get`, the end of its build log."""

    name: str
    image: str
    shared: bool
    from_: str
    apt: list[str]
    status: str
    error: Optional[str]
    size_bytes: Optional[int]
    log: Optional[str]
    raw: JsonDict = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, data: Any) -> "CustomImage":
        d = expect_dict(data, "a custom image")
        size = d.get("sizeBytes")
        return cls(
            name=_str(d.get("name")),
            image=_str(d.get("image")),
            shared=bool(d.get("shared")),
            from_=_str(d.get("from")),
            apt=[str(p) for p in d.get("apt") or []],
            status=_str(d.get("status")),
            error=d.get("error") if isinstance(d.get("error"), str) else None,
            size_bytes=size if isinstance(size, int) else None,
            log=d.get("log") if isinstance(d.get("log"), str) else None,
            raw=d,
        )


class ImageBuildFailedError(KindlingError):
    """A custom image's build failed; ``image`` is its record (``error``, the end of its ``log``)."""

    def __init__(self, image: CustomImage) -> None:
        super().__init__("IMAGE_BUILD_FAILED", f'custom image "{image.name}" failed to build: {image.error or "unknown error"}')
        self.image = image


def _request(from_: str, apt: Optional[Sequence[str]], files_dir: Optional[str], files_tar: Optional[bytes], files_dest: Optional[str], shared: bool) -> tuple[Any, Optional[bytes], dict[str, str]]:
    """The JSON body, or the tar body and its spec header, of a create."""
    if files_dir is not None and files_tar is not None:
        raise ValueError("give files_dir (tarred here) or files_tar (the archive's bytes), not both")
    spec: JsonDict = {"from": from_}
    if apt:
        spec["apt"] = list(apt)
    if files_dest is not None:
        spec["filesDest"] = files_dest
    if shared:
        spec["shared"] = True
    tar = tar_directory(files_dir) if files_dir is not None else files_tar
    if tar is None:
        return spec, None, {}
    return None, tar, {"content-type": "application/x-tar", "kindling-image-spec": json.dumps(spec, separators=(",", ":"))}


def _settled(image: CustomImage) -> Optional[CustomImage]:
    if image.status == "ready":
        return image
    if image.status == "failed":
        raise ImageBuildFailedError(image)
    return None


class Images:
    """``/v1/images``: create (waits for the build by default), get, list, delete custom images."""

    def __init__(self, http: "_Http") -> None:
        self._http = http

    def create(
        self,
        name: str,
        *,
        from_: str,
        apt: Optional[Sequence[str]] = None,
        files_dir: Optional[str] = None,
        files_tar: Optional[bytes] = None,
        files_dest: Optional[str] = None,
        shared: bool = False,
        wait: bool = True,
        poll_interval: float = 1.0,
    ) -> CustomImage:
        """``PUT /v1/images/NAME``: ``from_`` a built-in image plus ``apt`` packages and the files of ``files_dir``
        (or ``files_tar``) at ``files_dest`` (default /opt/NAME). ``wait`` polls until the build ended: the ready
        image, or :class:`ImageBuildFailedError`."""
        body, tar, headers = _request(from_, apt, files_dir, files_tar, files_dest, shared)
        if tar is None:
            created = CustomImage.from_wire(self._http.json("PUT", f"/v1/images/{seg(name)}", json_body=body))
        else:
            response = self._http.send("PUT", f"/v1/images/{seg(name)}", content=tar, headers=headers, idempotent=False)
            created = CustomImage.from_wire(response.json())
        return self.wait_ready(name, poll_interval=poll_interval) if wait else created

    def wait_ready(self, name: str, *, poll_interval: float = 1.0) -> CustomImage:
        """Polls ``GET /v1/images/NAME`` until the build ended."""
        while True:
            done = _settled(self.get(name))
            if done is not None:
                return done
            time.sleep(poll_interval)

    def get(self, name: str) -> CustomImage:
        """``GET /v1/images/NAME``; :class:`NotFoundError` when there is none."""
        return CustomImage.from_wire(self._http.json("GET", f"/v1/images/{seg(name)}"))

    def list(self) -> list[CustomImage]:
        """``GET /v1/images``: the caller's tenant's images and the shared ones."""
        answer = expect_dict(self._http.json("GET", "/v1/images"), "the image list")
        return [CustomImage.from_wire(item) for item in answer.get("images") or []]

    def delete(self, name: str) -> None:
        """``DELETE /v1/images/NAME``."""
        self._http.json("DELETE", f"/v1/images/{seg(name)}")


class AsyncImages:
    """``/v1/images`` (asyncio)."""

    def __init__(self, http: "_AsyncHttp") -> None:
        self._http = http

    async def create(
        self,
        name: str,
        *,
        from_: str,
        apt: Optional[Sequence[str]] = None,
        files_dir: Optional[str] = None,
        files_tar: Optional[bytes] = None,
        files_dest: Optional[str] = None,
        shared: bool = False,
        wait: bool = True,
        poll_interval: float = 1.0,
    ) -> CustomImage:
        """``PUT /v1/images/NAME`` (see :meth:`Images.create`)."""
        body, tar, headers = await asyncio.to_thread(_request, from_, apt, files_dir, files_tar, files_dest, shared)
        if tar is None:
            created = CustomImage.from_wire(await self._http.json("PUT", f"/v1/images/{seg(name)}", json_body=body))
        else:
            response = await self._http.send("PUT", f"/v1/images/{seg(name)}", content=tar, headers=headers, idempotent=False)
            created = CustomImage.from_wire(response.json())
        return await self.wait_ready(name, poll_interval=poll_interval) if wait else created

    async def wait_ready(self, name: str, *, poll_interval: float = 1.0) -> CustomImage:
        """Polls ``GET /v1/images/NAME`` until the build ended."""
        while True:
            done = _settled(await self.get(name))
            if done is not None:
                return done
            await asyncio.sleep(poll_interval)

    async def get(self, name: str) -> CustomImage:
        """``GET /v1/images/NAME``."""
        return CustomImage.from_wire(await self._http.json("GET", f"/v1/images/{seg(name)}"))

    async def list(self) -> list[CustomImage]:
        """``GET /v1/images``."""
        answer = expect_dict(await self._http.json("GET", "/v1/images"), "the image list")
        return [CustomImage.from_wire(item) for item in answer.get("images") or []]

    async def delete(self, name: str) -> None:
        """``DELETE /v1/images/NAME``."""
        await self._http.json("DELETE", f"/v1/images/{seg(name)}")
