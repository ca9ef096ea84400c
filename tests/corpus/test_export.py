import json

from medlvr.corpus.qa.export import render_qwen
from medlvr.corpus.qwen.format import model_box, smart_resize


def test_resize_rule_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    for h, w in [(500, 333), (64, 2000), (1024, 1024), (37, 91), (3000, 4000)]:
        for budget in (28 * 28 * 1280, 28 * 28 * 16384):
            assert smart_resize(h, w, max_pixels=budget) == tuple(hf_smart_resize(h, w, factor=28, min_pixels=56 * 56,
                                                                                   max_pixels=budget))


def test_grounding_answer_in_resized_pixels():
    row = {"height": 280, "width": 560, "question": "Where is the liver tumor?", "answer": "liver tumor",
           "boxes": [[28.0, 14.0, 56.0, 42.0]], "answer_is_box": True, "options": [], "answer_index": None}
    q, a = render_qwen(row)
    assert q == "Where is the liver tumor?"
    assert json.loads(a) == [{"bbox_2d": [28, 14, 56, 42], "label": "liver tumor"}]  # already on the 28-px grid
    # a tight budget halves the image: the box halves too
    assert json.loads(render_qwen(row, max_pixels=140 * 280)[1])[0]["bbox_2d"] == [14, 7, 28, 21]


def test_box_clamped_to_resized_image():
    assert model_box([-5, 0, 300, 50], (56, 280)) == (0, 0, 280, 50)


def test_mcq_and_box_options_render():
    row = {"height": 280, "width": 280, "question": "Which region contains the nodule?", "answer": "{box2}",
           "boxes": [[0, 0, 28, 28], [56, 56, 84, 84], [112, 112, 140, 140], [200, 0, 228, 28]],
           "options": ["{box0}", "{box1}", "{box2}", "{box3}"], "answer_index": 2, "answer_is_box": False}
    q, a = render_qwen(row)
    assert "C. [112, 112, 140, 140]" in q and a == "C. [112, 112, 140, 140]"
