from glm4v_edge.thinking import Piece, ReplyParser, history_text, parse_reply


def stream(text: str, chunk: int = 1) -> tuple[list[Piece], ReplyParser]:
    parser = ReplyParser()
    pieces = []
    for start in range(0, len(text), chunk):
        pieces += parser.feed(text[start:start + chunk])
    pieces += parser.finish()
    return pieces, parser


def test_full_reply_with_box():
    reply = parse_reply("<think>Two shapes.</think><answer>There are <|begin_of_box|>2<|end_of_box|>.</answer>")
    assert reply.thinking == "Two shapes."
    assert reply.answer == "There are 2."
    assert reply.boxes == ["2"]
    assert reply.final_answer == "2"
    assert reply.thinking_closed and reply.answer_closed


def test_missing_answer_tag_after_think():
    reply = parse_reply("<think>hmm</think>\nThe circle is red.")
    assert reply.thinking == "hmm"
    assert reply.answer == "The circle is red."
    assert reply.final_answer == "The circle is red."


def test_stops_without_closing_answer():
    reply = parse_reply("<think>a</think><answer>blue")
    assert reply.answer == "blue" and not reply.answer_closed


def test_cut_mid_tag_drops_the_partial_tag():
    reply = parse_reply("<think>counting</think><answer>3<|end_of_b")
    assert reply.answer == "3"
    reply = parse_reply("<think>still thinking</thi")
    assert reply.thinking == "still thinking" and reply.answer == "" and not reply.thinking_closed


def test_no_thinking_at_all_is_the_answer():
    reply = parse_reply("Just an answer.")
    assert reply.thinking == "" and reply.answer == "Just an answer."


def test_unterminated_thinking_stays_thinking():
    reply = parse_reply("<think>I am still working on")
    assert reply.thinking == "I am still working on" and reply.answer == ""


def test_text_after_answer_is_ignored():
    reply = parse_reply("<think>x</think><answer>y</answer>\nstray")
    assert reply.answer == "y"


def test_a_literal_less_than_sign_is_text():
    assert parse_reply("<answer>1 < 2 and a<b</answer>").answer == "1 < 2 and a<b"
    assert parse_reply("x <").answer == "x <"


def test_unclosed_box_counts():
    assert parse_reply("<answer><|begin_of_box|>green").final_answer == "green"


def test_streaming_char_by_char_equals_whole_parse():
    text = "<think>The red circle.\n</think>\n<answer>It is <|begin_of_box|>red<|end_of_box|></answer>"
    for chunk in (1, 2, 3, 7, len(text)):
        pieces, parser = stream(text, chunk)
        assert parser.reply == parse_reply(text)
        assert "".join(p.text for p in pieces if p.channel == "thinking").strip() == "The red circle."
        assert "".join(p.text for p in pieces if p.in_box) == "red"
        assert all("<" not in p.text for p in pieces)


def test_streaming_holds_back_only_possible_tags():
    parser = ReplyParser()
    assert parser.feed("<think>ab<") == [Piece("thinking", "ab")]
    assert parser.feed("/thi") == []
    assert parser.feed("nk>") == []
    assert parser.feed("<answer>ok") == [Piece("answer", "ok")]


def test_history_keeps_only_the_answer():
    reply = parse_reply("<think>secret reasoning</think><answer>The answer.</answer>")
    assert history_text(reply) == "The answer."
