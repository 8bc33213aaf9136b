"""Assistant-only labels for conversations: `chat_labels`, the one entry point.

Inside, lowest first: `conversations` (the shapes of rows users bring, as messages), `end_of_turn` (the one rule for
which tokens end a trained reply), `controls` (which messages and parts train, with what weight), `labels` (locating
each assistant turn under the template and assembling the labels).
"""

from .labels import ChatMask, chat_labels

__all__ = ["ChatMask", "chat_labels"]
