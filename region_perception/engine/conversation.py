"""Per-conversation memory for multi-turn ASK: the last turns and the regions they were about.

RegionGPT is trained on multi-turn conversations, so a robot can ask "what is this?" about
a region and then "what colour is it?" without repeating the region. Memory is bounded
(turns per conversation, number of conversations) and a conversation idle for longer than
``idle_s`` is forgotten: its next question is answered as a new conversation, and says so.
Plain Python, no rclpy; one store per engine, guarded by its own lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Conversation:
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer), oldest first
    regions: list[Any] = field(default_factory=list)  # the regions the conversation is about
    image_size: tuple[int, int] = (0, 0)
    last_used: float = 0.0


@dataclass
class Turn:
    """What one question gets from its conversation: history, regions and notes for the result."""

    conversation_id: str
    history: list[tuple[str, str]]
    regions: list[Any]
    notes: list[str]


class ConversationStore:
    """Bounded, expiring conversations keyed by ``conversation_id``."""

    def __init__(
        self,
        *,
        max_turns: int = 8,
        max_conversations: int = 64,
        idle_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_turns < 1 or max_conversations < 1 or idle_s <= 0:
            raise ValueError("conversation limits must be positive (turns, conversations, idle seconds)")
        self.max_turns = max_turns
        self.max_conversations = max_conversations
        self.idle_s = idle_s
        self.clock = clock
        self._items: OrderedDict[str, Conversation] = OrderedDict()
        self._expired: set[str] = set()  # ids forgotten for idleness (to say so once)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def _expire(self, now: float) -> None:
        for cid in [c for c, conv in self._items.items() if now - conv.last_used > self.idle_s]:
            del self._items[cid]
            self._expired.add(cid)
        while len(self._expired) > 4 * self.max_conversations:
            self._expired.pop()

    def begin(self, conversation_id: str, regions: list[Any], image_size: tuple[int, int], *, dialogue: bool) -> Turn:
        """The context for a question; ``regions`` empty = the conversation's last regions.

        ``dialogue`` False (a model without multi-turn training): no history is given and
        the result says the question was answered from this turn only.
        """
        if not conversation_id:
            return Turn("", [], list(regions), [])
        if not dialogue:
            return Turn("", [], list(regions), ["this model keeps no dialogue: answered from this turn only"])
        with self._lock:
            now = self.clock()
            self._expire(now)
            conv = self._items.get(conversation_id)
            notes = []
            if conv is None:
                if conversation_id in self._expired:
                    self._expired.discard(conversation_id)
                    notes.append(
                        f"conversation {conversation_id!r} had expired (idle > {self.idle_s:g} s): answered as new"
                    )
                return Turn(conversation_id, [], list(regions), notes)
            if tuple(image_size) != conv.image_size and not regions:
                notes.append(f"conversation {conversation_id!r}: the image size changed, its regions do not apply")
                return Turn(conversation_id, [], [], notes)
            self._items.move_to_end(conversation_id)
            return Turn(conversation_id, list(conv.turns), list(regions) or list(conv.regions), notes)

    def finish(self, turn: Turn, question: str, answer: str, image_size: tuple[int, int]) -> None:
        """Record the answered turn (bounded: oldest turns and least recently used conversations go)."""
        if not turn.conversation_id:
            return
        with self._lock:
            conv = self._items.pop(turn.conversation_id, None) or Conversation()
            if turn.regions and (turn.regions is not conv.regions):
                conv.regions = list(turn.regions)
            conv.turns = [*turn.history, (question, answer)][-self.max_turns :]
            conv.image_size = tuple(image_size)
            conv.last_used = self.clock()
            self._items[turn.conversation_id] = conv
            while len(self._items) > self.max_conversations:
                self._items.popitem(last=False)

    def forget(self, conversation_id: str) -> None:
        with self._lock:
            self._items.pop(conversation_id, None)
