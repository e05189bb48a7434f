"""`llava-local chat`: the terminal app, or one streamed answer.

Contract: `add_arguments(parser)` defines every chat flag once (`add_chat_arguments`), under the names the TUI reads
from the namespace: images, model, device, quant, n_ctx, prompt, json, temperature, top_p, top_k, repeat_penalty,
max_tokens, seed, system, session. Sampling flags default to None (= the GenerationConfig default).
`run(args)`: with both stdin and stdout on a terminal and no --prompt, the registered front-end's `launch(args)`
(entry-point group `llava_local.frontends`: the terminal app); otherwise one-shot mode
streams one answer to stdout (the question from --prompt, else from stdin). `--json` prints one JSON object with
the answer and statistics instead of streaming. Image paths are checked before the model loads, so a typo costs no
load time; the session then reads and decodes each image once (a file that is no image is reported from there);
every user mistake is a `LlavaLocalError` (one line on stderr from the CLI).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..config import DEVICES, GenerationConfig, RuntimeConfig
from ..errors import ImageError, LlavaLocalError, UsageError
from ..exits import OutputError, stdout_closed
from ..manifest import VISION_DTYPES
from ..plugins import load_plugin, plugins

HELP = "chat about images: the terminal app, or one answer with --prompt"
# Interactive front-ends register in this entry-point group (the terminal app does); the runtime names none of them.
FRONTEND_GROUP = "llava_local.frontends"

# Sampling flags: (name, type, help). They map 1:1 onto GenerationConfig fields.
GEN_FLAGS: tuple[tuple[str, type, str], ...] = (
    ("temperature", float, "sampling temperature; 0 = greedy (default 0.2)"),
    ("top_p", float, "nucleus sampling threshold in (0, 1] (default 0.95)"),
    ("top_k", int, "keep the k most likely tokens; 0 disables (default 40)"),
    ("repeat_penalty", float, "penalty for repeated tokens; 1 disables (default 1.0)"),
    ("max_tokens", int, "maximum answer length in tokens (default 512)"),
    ("seed", int, "sampling seed (default 0)"),
)


def add_chat_arguments(parser: argparse.ArgumentParser) -> None:
    """All chat flags; the TUI reads the same attribute names from the parsed namespace."""
    parser.add_argument("images", nargs="*", metavar="IMAGE", help="image files to ask about")
    parser.add_argument("--model", "-m", default=None,
                        help="bundle directory or installed model name (default: $LLAVA_LOCAL_MODEL, 'default', demo)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where to run (default: auto)")
    parser.add_argument("--quant", default=None, help="which GGUF of the bundle, e.g. q4_k_m (default: the bundle's)")
    parser.add_argument("--vision-dtype", dest="vision_dtype", choices=VISION_DTYPES, default=None,
                        help="which vision graph of the bundle (default: int8 on CPU when the bundle has one that "
                        "passed its gate, fp16 on CUDA when present, else the bundle's)")
    parser.add_argument("--n-ctx", dest="n_ctx", type=int, default=None,
                        help="context size in tokens (default: the bundle's context length)")
    parser.add_argument("--prompt", "-p", default=None, help="ask this and print the answer (no terminal app)")
    parser.add_argument("--json", action="store_true", help="one-shot: print one JSON object with answer and stats")
    parser.add_argument("--system", default=None, help="system prompt (default: the chat template's)")
    parser.add_argument("--session", default=None, metavar="ID", help="terminal app: resume a saved conversation")
    for name, typ, help_text in GEN_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=typ, default=None, help=help_text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_chat_arguments(parser)


def generation_from_args(args: argparse.Namespace) -> GenerationConfig:
    """GenerationConfig with the flags that were given (validated: bad values raise UsageError)."""
    given = {name: getattr(args, name) for name, _, _ in GEN_FLAGS if getattr(args, name, None) is not None}
    return GenerationConfig(**given)


def runtime_from_args(args: argparse.Namespace) -> RuntimeConfig:
    """RuntimeConfig from the chat flags (missing attributes mean the defaults, for callers like `python -m tui`)."""
    n_ctx = getattr(args, "n_ctx", None)
    return RuntimeConfig(device=getattr(args, "device", None) or "auto", n_ctx=n_ctx,
                         quant=getattr(args, "quant", None), vision_dtype=getattr(args, "vision_dtype", None))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def run(args: argparse.Namespace) -> int:
    if args.prompt is None and _isatty(sys.stdin) and _isatty(sys.stdout) and not args.json:
        found = plugins(FRONTEND_GROUP)
        if not found:
            raise LlavaLocalError("the terminal app is not installed here; ask one question with --prompt")
        plugin = next(iter(found.values()))
        try:
            launch = load_plugin(plugin)
        except LlavaLocalError as e:
            raise LlavaLocalError(f"the terminal app cannot start ({e}); ask one question with --prompt") from None
        with plugin.missing_extra_errors():
            return int(launch(args) or 0)
    return one_shot(args)


def _question(args: argparse.Namespace) -> str:
    if args.prompt is not None:
        text = args.prompt
    elif sys.stdin is None:  # started with fd 0 closed (`<&-`)
        raise UsageError("no question: stdin is closed; pass --prompt \"...\"")
    elif not _isatty(sys.stdin):
        try:
            text = sys.stdin.read()
        except UnicodeDecodeError:
            raise UsageError("the question on stdin is not valid text in the terminal's encoding (use UTF-8)") from None
        except OSError as e:
            raise LlavaLocalError(f"cannot read the question from stdin: {e.strerror or e}") from None
    else:
        raise UsageError("no question: pass --prompt \"...\" or pipe the question on stdin")
    if not text.strip():
        raise UsageError("the question is empty")
    return text.strip()


def one_shot(args: argparse.Namespace) -> int:
    """Answer one question about the images and print it (streamed, or as JSON)."""
    from ..bundle import open_model
    from ..events import Finished, ImageEncoded, PromptProcessed, TextChunk
    from ..session import ChatSession, check_image_file
    from ..textsafe import TerminalText, clean

    gen = generation_from_args(args)
    runtime = runtime_from_args(args)
    if getattr(args, "session", None) is not None:
        raise UsageError("--session resumes a conversation in the terminal app; one-shot mode (--prompt, --json, "
                         "piped input or output) always starts fresh: drop --session")
    if stdout_closed():  # checked before the model loads: the answer would go nowhere
        raise OutputError("cannot write to standard output: it is closed")
    question = _question(args)
    for path in args.images:
        check_image_file(path)  # ImageError for a missing file before the model loads; decoded once, by the session
    with open_model(args.model, runtime) as model:
        session = ChatSession(model, gen, system=args.system)
        stats: dict[str, Any] = {"images": []}
        finished: Finished | None = None
        safe = TerminalText()  # model text reaches the terminal without escape sequences or control characters
        try:
            for event in session.ask(question, images=args.images):
                if isinstance(event, TextChunk) and not args.json:
                    sys.stdout.write(safe.feed(event.text))
                    sys.stdout.flush()
                elif isinstance(event, ImageEncoded):
                    stats["images"].append({"id": event.image_id, "cached": event.cached, "seconds": event.seconds})
                elif isinstance(event, PromptProcessed):
                    stats["prefill_seconds"] = event.seconds
                elif isinstance(event, Finished):
                    finished = event
        except KeyboardInterrupt:
            if not args.json:
                sys.stdout.write("\n")  # end the partial answer's line before the CLI reports the interrupt
                sys.stdout.flush()
            raise
        if finished is None:  # pragma: no cover - the session always finishes
            raise ImageError("no answer was produced")
        if args.json:
            info = model.info
            out = {
                "answer": clean(finished.text), "stop_reason": finished.stop_reason, "model": info.name,
                "quant": info.quant, "llm_backend": info.llm_backend, "vision_backend": info.vision_backend,
                "vision_dtype": info.vision_dtype,
                "n_prompt_tokens": finished.n_prompt_tokens, "n_generated": finished.n_generated,
                "time_to_first_token": finished.time_to_first_token,
                "tokens_per_second": finished.tokens_per_second, "context_used": finished.context_used,
                "context_max": finished.context_max, **stats,
            }
            sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        else:
            sys.stdout.write("\n")
        sys.stdout.flush()
    return 0
