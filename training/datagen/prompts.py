"""Prompts for GPT-assisted visual instruction data: symbolic context, system messages, few-shot examples.

Contract: `symbolic_context(record)` renders what a text-only LLM "sees" of an image, as in the LLaVA paper:
the captions, one per line, then a blank line and one box per line as `category: [x1, y1, x2, y2]` with
normalised coordinates to 3 decimals. `build_messages(rtype, context, shots)` returns OpenAI-style chat
messages: the system message for the response type, `shots` (user context, assistant response) example
pairs, then the user context. The response formats asked for here are the ones `parse.py` reads:

- conversation:       "Q: …" / "A: …" lines, 2–6 pairs
- complex_reasoning:  exactly one "Q: …" / "A: …" pair, the answer reasoning step by step
- detail:             one paragraph, no list, no headings

`BRIEF_REQUESTS` (stage-1 pretraining) and `DETAIL_REQUESTS` (the human turn of `detail` samples) are our
own instruction lists; a seeded choice picks one per sample.
"""

from __future__ import annotations

from .records import ImageRecord

RTYPES = ("conversation", "detail", "complex_reasoning")

BRIEF_REQUESTS: tuple[str, ...] = (
    "Describe the image concisely.",
    "Give a short description of the image.",
    "Summarize what you see in the picture.",
    "Write a brief caption for this image.",
    "What does this image show? Answer in one sentence.",
    "Provide a one-sentence summary of the photo.",
    "Describe the picture in a few words.",
    "Share a short description of what is shown.",
    "Caption this image briefly.",
    "Tell me briefly what is in the image.",
    "Give a compact description of this picture.",
)

DETAIL_REQUESTS: tuple[str, ...] = (
    "Describe the image in detail.",
    "Give a detailed description of this picture.",
    "What can you see in this image? Describe everything carefully.",
    "Explain the contents of the image thoroughly.",
    "Walk me through everything shown in the picture.",
    "Write a detailed account of the scene in the image.",
    "Describe the picture as precisely as you can, including where things are.",
    "Provide a thorough description of the photo.",
)

_COMMON = (
    "You are an AI visual assistant looking at a single image. Instead of the pixels you are given "
    "captions that describe the image and a list of objects with bounding boxes written as "
    "category: [x1, y1, x2, y2], coordinates normalised from 0 to 1 with x to the right and y downwards. "
    "Write as if you are seeing the image yourself: never mention captions, boxes, coordinates or any "
    "description you were given, and state only what the image shows with confidence."
)

SYSTEM: dict[str, str] = {
    "conversation": _COMMON + (
        " Write a conversation between a person asking about the image and you answering. Ask diverse "
        "questions with definite answers: the objects, their number, colours, actions, positions relative "
        "to each other. Write 2 to 6 pairs, each question on a line starting with 'Q: ' and each answer on "
        "the next line starting with 'A: '. Nothing else."),
    "detail": _COMMON + (
        " Describe the image in rich detail in one paragraph: what the objects are, how many, what they look "
        "like, where they are relative to each other. Use the box positions to say where things are, in "
        "words (left, right, top, bottom, next to). Write one paragraph of plain sentences, no list."),
    "complex_reasoning": _COMMON + (
        " Ask one question that needs reasoning about the image beyond naming what is there: why something "
        "is happening, what might happen next, what the objects are used for, or a count or comparison that "
        "needs several facts. Then answer it step by step. Write the question on one line starting with "
        "'Q: ' and the answer on the next line starting with 'A: '. Nothing else."),
}

# Few-shot contexts: our own small scenes, written in the symbolic format.
_EXAMPLE_CONTEXTS = (
    "A man rides a bicycle past a red food truck.\n"
    "A street with a food truck and a cyclist.\n"
    "A person on a bike near a parked truck.\n\n"
    "person: [0.412, 0.305, 0.538, 0.801]\n"
    "bicycle: [0.398, 0.562, 0.561, 0.902]\n"
    "truck: [0.012, 0.150, 0.356, 0.780]\n"
    "person: [0.120, 0.330, 0.180, 0.540]",
    "Two cats sleep on a sofa next to a laptop.\n"
    "A gray sofa with two sleeping cats and an open laptop.\n\n"
    "cat: [0.051, 0.402, 0.380, 0.713]\n"
    "cat: [0.402, 0.455, 0.640, 0.722]\n"
    "couch: [0.000, 0.251, 1.000, 0.998]\n"
    "laptop: [0.702, 0.300, 0.951, 0.612]",
)

EXAMPLES: dict[str, tuple[str, ...]] = {
    "conversation": (
        "Q: What is the person in the middle of the image doing?\n"
        "A: The person in the middle is riding a bicycle along the street.\n"
        "Q: What vehicle is parked on the left?\n"
        "A: A red food truck is parked on the left side of the street.\n"
        "Q: How many people can be seen?\n"
        "A: Two people can be seen: the cyclist and another person standing near the truck.",
        "Q: What animals are in the picture?\n"
        "A: There are two cats in the picture.\n"
        "Q: What are the cats doing?\n"
        "A: Both cats are sleeping on the sofa.\n"
        "Q: What is on the right side of the sofa?\n"
        "A: An open laptop is on the right side of the sofa, next to the cats.",
    ),
    "detail": (
        "The image shows a street scene. In the middle, a man rides a bicycle past a bright red food truck "
        "that is parked on the left side of the road. The truck takes up most of the left third of the "
        "picture. A second person stands near the front of the truck, smaller and further away.",
        "The image shows a gray sofa that fills the whole picture. Two cats are curled up asleep on it, one "
        "on the left and one just to its right, lying close together. On the right side of the sofa there is "
        "an open laptop, sitting a little higher than the cats.",
    ),
    "complex_reasoning": (
        "Q: Why might the cyclist need to be careful at this moment?\n"
        "A: The cyclist is passing close to a parked food truck, and a person is standing near the truck. "
        "Someone could step out from behind the truck into his path, so he should slow down and watch the "
        "space beside the truck.",
        "Q: What might happen if someone wanted to use the laptop right now?\n"
        "A: The laptop is on the sofa right next to the two sleeping cats. Reaching for it could wake the "
        "cats, so the person would probably move it carefully or wait until the cats move.",
    ),
}


def symbolic_context(record: ImageRecord) -> str:
    """Captions, a blank line, then `category: [x1, y1, x2, y2]` per box (3 decimals)."""
    lines = list(record.captions)
    if record.boxes:
        lines.append("")
        lines += [f"{b.category}: [{', '.join(f'{v:.3f}' for v in b.bbox)}]" for b in record.boxes]
    return "\n".join(lines)


def build_messages(rtype: str, context: str, shots: int = 2) -> list[dict[str, str]]:
    """System message, `shots` worked examples, then the context to answer."""
    messages = [{"role": "system", "content": SYSTEM[rtype]}]
    for ctx, resp in list(zip(_EXAMPLE_CONTEXTS, EXAMPLES[rtype]))[:shots]:
        messages += [{"role": "user", "content": ctx}, {"role": "assistant", "content": resp}]
    messages.append({"role": "user", "content": context})
    return messages
