"""The Gradio 6 web chat: any variant, streamed, thinking collapsible, with a real stop."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from glm4v_edge.demo.catalog import StoppedWhileWaiting, VariantCatalog
from glm4v_edge.demo.examples import load_examples
from glm4v_edge.demo.reply_view import ReplyView
from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.demo.uploads import ACCEPTED_SUFFIXES, UserTurn, read_user_turn
from glm4v_edge.errors import Glm4vEdgeError
from glm4v_edge.messages import answer_message
from glm4v_edge.progress import LatestLine
from glm4v_edge.runtime.variant import MeasurableVariant, Sampling

TITLE = "GLM-4.1V-Thinking · glm4v-edge"
# At most ~20 chat updates a second: per-token updates would make Gradio's diffing, not the
# model, the bottleneck for fast variants (and the tokens/s shown would measure the UI).
UPDATE_INTERVAL_S = 0.05
STATUS_INTERVAL_S = 0.5  # how often the status line under the picker changes while a variant loads
CSS = """
#chat mark { background: #fde68a; color: #1f2937; padding: 0 .25em; border-radius: .25em; font-weight: 600; }
#chat sub { opacity: .65; }
"""


class SessionStops:
    """One stop event per browser session, set by the Stop button, seen by the running generation."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self.lock:
            self.events[session] = event = threading.Event()
            return event

    def stop(self, session: str) -> None:
        with self.lock:
            event = self.events.get(session)
        if event is not None:
            event.set()

    def end(self, session: str, event: threading.Event) -> None:
        with self.lock:
            if self.events.get(session) is event:
                del self.events[session]


def sampling_from(temperature: float, top_p: float) -> Sampling:
    if temperature <= 0:
        return Sampling.greedy()
    return Sampling(do_sample=True, temperature=float(temperature), top_p=float(top_p))


def user_bubbles(turn: UserTurn) -> list[dict]:
    bubbles = [{"role": "user", "content": {"path": str(path)}} for path in turn.files()]
    return [*bubbles, {"role": "user", "content": turn.text}] if turn.text else bubbles


def on_zero_gpu(function):
    """On a ZeroGPU Space, ``spaces.GPU`` lends the GPU for each call; elsewhere nothing changes."""
    try:
        import spaces
    except ImportError:
        return function
    return spaces.GPU(duration=180)(function)


def describe(entry) -> str:
    variant = entry.variant
    shown = f"{variant.artifact_bytes / 2**20:.1f} MiB" if isinstance(variant, MeasurableVariant) else "served remotely"
    return f"**{entry.variant.name}** ready · {shown} · loaded in {entry.load_s:.1f} s"


def build_demo(settings: DemoSettings, catalog: VariantCatalog | None = None) -> gr.Blocks:
    catalog = catalog or VariantCatalog(settings)
    stops = SessionStops()
    default_variant = catalog.default_name()

    def respond(message, chat, conversation, variant_name, system, thinking_budget, max_new_tokens, temperature,
                top_p, request: gr.Request):
        try:
            turn = read_user_turn(message, settings, Path(get_upload_folder()))
        except Glm4vEdgeError as error:
            raise gr.Error(str(error), print_exception=False) from None
        chat = [*chat, *user_bubbles(turn)]
        user = turn.message()
        messages = [*([{"role": "system", "content": system.strip()}] if system.strip() else []), *conversation, user]
        yield chat, conversation, gr.MultimodalTextbox(value=None, interactive=False)

        stop = stops.start(request.session_hash)
        view = ReplyView(variant_name)
        try:
            if catalog.busy(variant_name):  # others are generating on it: say so while this one waits
                waiting = {"role": "assistant", "content": f"waiting for {variant_name} (another chat is using it)…"}
                yield [*chat, waiting], conversation, gr.skip()
            with catalog.use(variant_name, stop) as variant:
                view.variant_name = variant.name
                shown_at = 0.0
                for event in variant.generate(messages, max_new_tokens=int(max_new_tokens),
                                              sampling=sampling_from(temperature, top_p),
                                              thinking_budget=int(thinking_budget), stop=stop):
                    view.add(event)
                    if event.elapsed_s - shown_at >= UPDATE_INTERVAL_S:
                        shown_at = event.elapsed_s
                        yield [*chat, *view.messages()], conversation, gr.skip()
            view.stopped = stop.is_set()
        except StoppedWhileWaiting:
            view.stopped = True  # Stop pressed while it waited: it never ran
        except Glm4vEdgeError as error:
            raise gr.Error(str(error), print_exception=False) from None
        finally:
            stops.end(request.session_hash, stop)
        view.finished = True
        answer = answer_message(view.history_answer())
        yield [*chat, *view.messages()], [*conversation, user, answer], gr.MultimodalTextbox(value=None,
                                                                                            interactive=True)

    def select_variant(name: str):
        """Load the chosen variant (a hub build's files download now), saying how far it got."""
        status, outcome = LatestLine(), {}

        def load() -> None:
            try:
                outcome["entry"] = catalog.load(name, status)
            except Glm4vEdgeError as error:
                outcome["error"] = error

        worker = threading.Thread(target=load, name=f"load-{name}", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(STATUS_INTERVAL_S)
            if worker.is_alive():
                yield f"loading **{name}**…" + (f" {status.line}" if status.line else "")
        if "error" in outcome:
            raise gr.Error(str(outcome["error"]), print_exception=False)
        yield describe(outcome["entry"])

    def stop_generation(request: gr.Request) -> None:
        stops.stop(request.session_hash)

    def clear(request: gr.Request):
        stops.stop(request.session_hash)
        return [], [], gr.MultimodalTextbox(value=None, interactive=True)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        gr.Markdown(f"## {TITLE}\nAsk about images (up to {settings.max_images} per message, any aspect ratio), "
                    "a video or a PDF. The model thinks first; open *Thinking* to read it.")
        conversation = gr.State([])  # what the model sees next turn: user turns and answers, never thinking
        with gr.Row():
            with gr.Column(scale=3):
                chatbot = gr.Chatbot(label="Chat", elem_id="chat", height=520, feedback_options=None,
                                     buttons=["copy"], latex_delimiters=[])
                textbox = gr.MultimodalTextbox(
                    file_count="multiple", file_types=ACCEPTED_SUFFIXES, sources=["upload"], elem_id="message",
                    placeholder="Ask about an image, a video or a PDF…", show_label=False, autofocus=True,
                )
                with gr.Row():
                    stop_button = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_button = gr.Button("Clear", elem_id="clear")
                gr.Examples(examples=[e.textbox_value() for e in load_examples()], inputs=textbox,
                            label="Examples (the embedded model answers these)")
            with gr.Column(scale=1):
                variant = gr.Dropdown(choices=catalog.names(), value=default_variant, label="Variant",
                                      elem_id="variant")
                variant_status = gr.Markdown(elem_id="variant-status")
                if catalog.unavailable:
                    gr.Markdown("Not offered here: " + "; ".join(f"{name} ({reason})" for name, reason in
                                                                 catalog.unavailable.items()), elem_id="unavailable")
                system = gr.Textbox(label="System prompt", lines=2, elem_id="system")
                thinking_budget = gr.Slider(0, settings.thinking_budget, value=settings.thinking_budget, step=1,
                                            label="Thinking budget (tokens)",
                                            info="then the answer is forced; 0 answers directly (this project's "
                                                 "addition: the official demo has none)",
                                            elem_id="thinking-budget")
                max_new_tokens = gr.Slider(1, 16384, value=settings.max_new_tokens, step=1, label="Max new tokens",
                                           elem_id="max-new-tokens")
                temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature", info="0 is greedy")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p")

        generation = textbox.submit(
            on_zero_gpu(respond),
            [textbox, chatbot, conversation, variant, system, thinking_budget, max_new_tokens, temperature, top_p],
            [chatbot, conversation, textbox],
            # Every accepted request starts at once and waits for its variant in the catalog, where
            # Stop reaches it; Gradio only bounds how many are open.
            api_name="chat", concurrency_limit=settings.queue_size, concurrency_id="generate",
        )
        # After an error the textbox would stay locked; this runs whatever happened.
        generation.then(lambda: gr.MultimodalTextbox(interactive=True), None, textbox, api_name=False, queue=False)
        stop_button.click(stop_generation, None, None, api_name="stop", queue=False)
        clear_button.click(clear, None, [chatbot, conversation, textbox], api_name="clear", queue=False)
        chatbot.clear(clear, None, [chatbot, conversation, textbox], api_name=False, queue=False)  # its trash icon
        variant.change(select_variant, variant, variant_status, api_name="select_variant")
        demo.load(select_variant, variant, variant_status, api_name=False)
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1)
    return demo


def launch_demo(settings: DemoSettings, *, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
                prevent_thread_lock: bool = False) -> gr.Blocks:
    demo = build_demo(settings)
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=f"{settings.max_file_mb}mb",
                css=CSS, prevent_thread_lock=prevent_thread_lock, show_error=True)
    return demo
