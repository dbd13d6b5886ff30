"""What a provider returns for one chunk, and what the merger assembles from chunks.

Times in a `ChunkTranscript` are seconds relative to the start of the chunk's audio.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class Word(BaseModel):
    start: float
    end: float
    text: str
    probability: float | None = None


class Segment(BaseModel):
    start: float
    end: float
    text: str
    words: list[Word] | None = None
    speaker: str | None = None
    # The decoder's confidence, where the provider gives it (Whisper models do): the mean log
    # probability of the segment's tokens (below -1 is doubtful) and the probability that the window
    # held no speech at all.
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    # start/end (and the words' times) were estimated from the audio's speech energy: the provider
    # gave text only (`stt_transcriber.timing.estimate_times`). Such times can be off by seconds, so
    # the merger aligns these chunks by their words alone. Absent in older documents: False.
    estimated: bool = False


class ChunkTranscript(BaseModel):
    segments: list[Segment] = Field(default_factory=list)
    language: str | None = None
    provider: str
    model: str | None = None

    @property
    def text(self) -> str:
        return " ".join(segment.text.strip() for segment in self.segments if segment.text.strip())
