"""OpenCalling for Python: the calling API (login, call, accept, reject,
hangup, mute, hands-free) with its events as an asyncio stream.

    import asyncio, opencalling

    async def main():
        async with opencalling.Calling("calls.example.com:4433") as alice:
            await alice.login(1400000001, "alice", user_sig)
            call_id = await alice.call("bob")
            async for event in alice.events():
                print(event.callback, event.data)
                if event.callback == "onCallEnd":
                    break

    asyncio.run(main())

Every request runs the SDK in a worker thread (asyncio.to_thread) with the
GIL released; a refused request raises CallingError with the SDK's code.
Audio devices are named: input "system", "silence", "tone:HZ", "wav:PATH",
"wav-loop:PATH"; output "system", "null", "wav:PATH" (bots record there).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Dict, Optional, TypeVar

from . import _native

__all__ = [
    "AUDIO",
    "VIDEO",
    "Calling",
    "CallingError",
    "Event",
    "generate_test_user_sig",
]
__version__: str = _native.__version__

#: Call types, as the original's.
AUDIO = 1
VIDEO = 2

T = TypeVar("T")


class CallingError(Exception):
    """A request the SDK refused or could not complete: `code` is its
    error code (the numbers of docs/protocol.md), `message` its text."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} (code {self.code})"


@dataclass(frozen=True)
class Event:
    """One event: `callback` is the original's delegate name
    ("onInvited", "onUserVoiceVolume", "onCallEnd"...; None for our
    extensions, such as "CallEnded" with its reason), `name` the event's
    own ("Invited"...), `data` its fields ({} for events without any)."""

    callback: Optional[str]
    name: str
    data: Dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_json(text: str) -> "Event":
        decoded = json.loads(text)
        event = decoded["event"]
        if isinstance(event, str):
            return Event(decoded["callback"], event, {})
        ((name, data),) = event.items()
        return Event(decoded["callback"], name, data)


def _sdk(function: Callable[..., T], *args: Any) -> T:
    try:
        return function(*args)
    except _native.CallingError as error:
        code, message = error.args
        raise CallingError(code, message) from None


def generate_test_user_sig(
    sdk_app_id: int, secret_key: str, user_id: str, valid_for: int = 86_400
) -> str:
    """A UserSig signed with the app's secret key (the original's
    GenerateTestUserSig): for development and tests only."""
    return _sdk(_native.generate_test_user_sig, sdk_app_id, secret_key, user_id, valid_for)


class Calling:
    """One user's instance of the SDK (the original's TRTCCalling)."""

    def __init__(
        self,
        server: str,
        *,
        fingerprint: Optional[str] = None,
        ca_file: Optional[str] = None,
        server_name: Optional[str] = None,
        input: str = "system",
        output: str = "system",
        voice_volume_interval_ms: int = 300,
        reconnect: bool = True,
        fallback: str = "same",
        decoder_complexity: int = 7,
        low_latency: bool = False,
        device_id: Optional[str] = None,
        echo_cancellation: Optional[bool] = None,
        noise_suppression: Optional[bool] = None,
        auto_gain: Optional[bool] = None,
        media_key: Optional[str] = None,
        media_keys: Optional[Dict[str, str]] = None,
        media_identity: Optional[str] = None,
    ) -> None:
        """Voice processing: each switch left as None is on for the system
        microphone and off for files, tones and silence. `device_id` names
        this device of the user (1-64 of a-z A-Z 0-9 - _) on servers that
        ring several; None: a random one, kept for the instance's life.
        End-to-end encrypted audio: `media_key`, one key every user shares
        (32 to 128 hex digits), or `media_keys`, each user's key by user id,
        or `media_identity`, the file of this device's identity for keys the
        SDK makes and seals to each member (made if missing; members'
        safety numbers come as MemberIdentity events); None of the three:
        off. A call between a device that encrypts and one that does not,
        or not alike, is refused (code 3008)."""
        self._native = _native.Calling(
            server,
            fingerprint=fingerprint,
            ca_file=ca_file,
            server_name=server_name,
            input=input,
            output=output,
            voice_volume_interval_ms=voice_volume_interval_ms,
            reconnect=reconnect,
            fallback=fallback,
            decoder_complexity=decoder_complexity,
            low_latency=low_latency,
            device_id=device_id,
            echo_cancellation=echo_cancellation,
            noise_suppression=noise_suppression,
            auto_gain=auto_gain,
            media_key=media_key,
            media_keys=media_keys,
            media_identity=media_identity,
        )
        self._closed = False

    async def login(self, sdk_app_id: int, user_id: str, user_sig: str) -> None:
        """Logs in; nothing else works before it."""
        await asyncio.to_thread(_sdk, self._native.login, sdk_app_id, user_id, user_sig)

    async def logout(self) -> None:
        """Logs out."""
        await asyncio.to_thread(_sdk, self._native.logout)

    async def call(
        self,
        user_id: str,
        call_type: int = AUDIO,
        timeout_ms: Optional[int] = None,
        user_data: Optional[str] = None,
    ) -> str:
        """Invites `user_id` (into the current call when in one); returns
        the call id."""
        return await asyncio.to_thread(
            _sdk, self._native.call, user_id, call_type, timeout_ms, user_data
        )

    async def accept(self) -> None:
        """Accepts the ringing invitation (after onInvited)."""
        await asyncio.to_thread(_sdk, self._native.accept)

    async def reject(self) -> None:
        """Rejects the ringing invitation."""
        await asyncio.to_thread(_sdk, self._native.reject)

    async def hangup(self) -> None:
        """Cancels before anyone answered; leaves the call otherwise."""
        await asyncio.to_thread(_sdk, self._native.hangup)

    async def call_stats(self) -> dict:
        """The call's statistics (the current call, or the last one): the
        local user's and each other member's network quality, round trip,
        loss, jitter, bitrate and transport (docs/bindings.md)."""
        return json.loads(await asyncio.to_thread(_sdk, self._native.call_stats))

    @property
    def device_id(self) -> str:
        """The device this instance names at login."""
        return self._native.device_id()

    def set_mic_mute(self, muted: bool) -> None:
        """Stops (True) or resumes sending the microphone."""
        self._native.set_mic_mute(muted)

    @property
    def mic_muted(self) -> bool:
        return self._native.is_mic_muted()

    def set_hands_free(self, hands_free: bool) -> None:
        """Speakerphone route on or off."""
        self._native.set_hands_free(hands_free)

    @property
    def hands_free(self) -> bool:
        return self._native.is_hands_free()

    def set_low_latency(self, low_latency: bool) -> None:
        """10 ms audio frames (once every other member plays them) or 20 ms."""
        self._native.set_low_latency(low_latency)

    @property
    def low_latency(self) -> bool:
        return self._native.is_low_latency()

    async def next_event(self, timeout: Optional[float] = None) -> Optional[Event]:
        """The next event, or None when none came within `timeout` seconds."""
        text = await asyncio.to_thread(self._native.next_event, timeout)
        return None if text is None else Event.from_json(text)

    async def events(self) -> AsyncIterator[Event]:
        """Every event, in order, until the instance is closed."""
        while not self._closed:
            try:
                event = await self.next_event(0.25)
            except EOFError:
                return
            if event is not None:
                yield event

    async def close(self) -> None:
        """Logs out (a call ends as a hang-up) and releases everything (the
        original's destroy). Idempotent."""
        self._closed = True
        await asyncio.to_thread(self._native.destroy)

    async def __aenter__(self) -> "Calling":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
