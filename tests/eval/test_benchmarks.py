"""Every benchmark on a small fixture in its public form, scored by hand: the official rule and
its traps (V* answered "A" everywhere, "1" vs "10", 4.9% vs 5.1%, a float with precision 2, the
four WeMath cases, cycle averaging)."""
import json
import os

import pytest

from codedance_jax import rewards
from codedance_jax.eval import registry, scoring, summary
from eval_fixtures import (b64png, chartqa_official, chartqa_parquet, hrbench_tsv, png, vstar, write_json,
                           write_parquet)


def score_all(benchmark, dataset, responses: dict) -> dict:
    lines = [{"id": item_id, "response": response} for item_id, response in responses.items()]
    return summary.summarize(benchmark, dataset, scoring.rescore(benchmark, dataset, lines, "test"))


def answer(text) -> str:
    return f"<think>Looking.</think>\n<answer>{text}</answer>"


def test_vstar_options_are_shuffled_so_always_a_does_not_score_100(tmp_path):
    entries = {"direct_attributes": [(f"What is the colour of the cup {k}?", ["red", "blue", "green", "white"])
                                     for k in range(6)],
               "relative_position": [(f"Is the cup {k} left of the dog?", ["left", "right"]) for k in range(4)]}
    root = vstar(str(tmp_path / "vstar"), entries)
    benchmark = registry.get("vstar")
    dataset = benchmark.read(root)
    assert [item.id for item in dataset.items][:2] == ["direct_attributes/sa_0", "direct_attributes/sa_1"]
    assert [item.id for item in benchmark.read(root).items] == [item.id for item in dataset.items]
    assert [item.options for item in benchmark.read(root).items] == [item.options for item in dataset.items]
    # The right option (first in the file) lands on several letters, and each gold letter names it.
    right = {item.id: entries[item.fields["category"]][int(item.id[-1])][1][0] for item in dataset.items}
    assert all(item.options["ABCD".index(item.gold)] == right[item.id] for item in dataset.items)
    at_a = sum(item.options[0] == right[item.id] for item in dataset.items)
    assert 0 < at_a < len(dataset.items)

    always_a = score_all(benchmark, dataset, {item.id: answer("A") for item in dataset.items})
    assert always_a["overall"] == pytest.approx(100 * at_a / 10) and always_a["overall"] < 100
    by_text = score_all(benchmark, dataset, {item.id: answer(right[item.id]) for item in dataset.items})
    assert by_text["overall"] == 100 and by_text["by_category"]["relative_position"]["total"] == 4
    assert by_text["decided_by"] == {"choice_text": 10}
    assert "(A) " in dataset.items[0].question and "Options:" in dataset.items[0].question


def test_hrbench_accuracy_is_averaged_over_cycles(tmp_path):
    # Two questions (single, cross) x four cycles; cycle 1 of the cross question refers to a row
    # with no image and is skipped, so cycles differ in size and the cycle average differs from pooling.
    rows = []
    for q, category in enumerate(("single", "cross")):
        for cycle in range(4):
            index = 10 * q + cycle
            rows.append({"index": index, "question": f"Q{q}?", "A": "w", "B": "x", "C": "y", "D": "z",
                         "answer": "ABCD"[cycle], "category": category, "cycle_category": f"c{cycle}",
                         "image": b64png(q) if cycle == 0 else ("999" if index == 11 else str(10 * q))})
    path = hrbench_tsv(str(tmp_path / "hr_bench_4k.tsv"), rows)
    benchmark = registry.get("hrbench_4k")
    dataset = benchmark.read(path)
    assert len(dataset.items) == 7 and [s.row for s in dataset.skipped] == [5]
    assert dataset.skipped[0].field == "image" and "999" in dataset.skipped[0].reason
    assert dataset.items[1].image.load().size == (64, 48)  # resolved through the index reference
    # single: right in cycles 0-3 except cycle 3; cross: right in cycle 0 only.
    right = {"0", "1", "2", "10"}
    responses = {item.id: answer(item.gold if item.id in right else "ABCD"["ABCD".index(item.gold) - 1])
                 for item in dataset.items}
    result = score_all(benchmark, dataset, responses)
    # cycle accuracies: c0 2/2, c1 1/1, c2 1/2, c3 0/2 -> (100 + 100 + 50 + 0) / 4
    assert result["overall"] == pytest.approx(62.5)
    # Per category, as the official script does: summed over the cycles where it occurs, divided by
    # all four cycles (cross: c0 100, c2 0, c3 0, absent from c1).
    assert result["by_category_cycle_averaged"] == {"cross": pytest.approx(25), "single": pytest.approx(75)}
    assert result["by_category_pooled"]["single"]["accuracy"] == 75
    assert result["num_items"] == 7 and result["skipped"] == 1


CHART_ROWS = {"human": [("How much in 2010?", "12.5"), ("How much in 2011?", "12.5"), ("Is it rising?", "Yes")],
              "augmented": [("What is the peak?", "100"), ("Which country?", "Canada")]}
CHART_ANSWERS = {"human/0": "13.1125",      # 4.9% above 12.5: accepted
                 "human/1": "13.1375",      # 5.1% above: rejected
                 "human/2": "yes",          # text, case-insensitive
                 "augmented/0": "95.1",     # 4.9% below 100
                 "augmented/1": "canada."}  # text must match exactly


@pytest.mark.parametrize("form", ["official", "parquet"])
def test_chartqa_relaxed_accuracy_per_split_and_average(tmp_path, form):
    path = (chartqa_official(str(tmp_path / "ChartQA"), CHART_ROWS) if form == "official"
            else chartqa_parquet(str(tmp_path / "chartqa.parquet"), CHART_ROWS))
    benchmark = registry.get("chartqa")
    dataset = benchmark.read(path)
    assert sorted(item.id for item in dataset.items) == sorted(CHART_ANSWERS)
    result = score_all(benchmark, dataset, {k: answer(v) for k, v in CHART_ANSWERS.items()})
    assert result["human"] == pytest.approx(200 / 3) and result["augmented"] == 50
    assert result["average"] == result["overall"] == pytest.approx((200 / 3 + 50) / 2)
    assert result["decided_by"] == {"relaxed_5pct": 3, "exact_case_insensitive": 2}


@pytest.mark.parametrize("answer, label, correct", [
    ("45%", "0.45", True), ("45%", "45", False),       # "%" divides by 100, as pix2struct does
    ("1,234", "1234", False), ("$12", "12", False),     # only what float() reads is a number
    ("12 million", "12", False), (" 12.4 ", "12", True),
    ("0.0", "0", False), ("0", "0", True),              # a label of 0 is compared as text
    ("-5.1", "-5", True), ("inf", "5", False),
])
def test_chartqa_numbers_are_read_as_pix2struct_reads_them(answer, label, correct):
    from codedance_jax.eval.benchmarks.chartqa import relaxed_match
    assert relaxed_match(answer, label).correct is correct


def test_countbenchqa_is_numeric_exact(tmp_path):
    rows = [{"image": {"bytes": png(k), "path": None}, "text": "t", "question": f"How many dogs {k}?", "number": n}
            for k, n in enumerate([1, 10, 3, 2])]
    path = write_parquet(str(tmp_path / "countbench.parquet"), rows)
    benchmark = registry.get("countbenchqa")
    dataset = benchmark.read(path)
    result = score_all(benchmark, dataset, {"0": answer("10"), "1": answer("1"), "2": answer("3 dogs"),
                                            "3": answer("2")})
    assert result["overall"] == 50 and result["by_number"]["1"]["correct"] == 0
    assert result["by_number"]["10"]["correct"] == 0 and result["by_number"]["3"]["correct"] == 1


def test_mathvista_normalises_by_question_and_answer_type(tmp_path):
    def row(pid, question_type, answer_type, answer_text, choices=None, precision=None, task="figure QA"):
        return {"pid": pid, "question": f"Question {pid}?", "image": f"images/{pid}.png", "choices": choices,
                "unit": None, "precision": precision, "answer": answer_text, "question_type": question_type,
                "answer_type": answer_type, "query": f"Hint: ...\nQuestion {pid}?",
                "metadata": {"language": "english", "source": "s", "category": "math-targeted-vqa", "task": task,
                             "context": "plot", "grade": "high school", "skills": ["arithmetic reasoning"]}}
    data = {"1": row("1", "free_form", "float", "1.45", precision=2.0),
            "2": row("2", "free_form", "float", "1.45", precision=2.0),
            "3": row("3", "multi_choice", "text", "5", choices=["3", "5", "7"]),
            "4": row("4", "multi_choice", "text", "blue square", choices=["red circle", "blue square"], task="geometry"),
            "5": row("5", "free_form", "integer", "12"),
            "6": row("6", "free_form", "integer", "12")}
    os.makedirs(tmp_path / "images")
    for pid in data:
        (tmp_path / "images" / f"{pid}.png").write_bytes(png(int(pid)))
    path = write_json(str(tmp_path / "testmini.json"), data)
    benchmark = registry.get("mathvista_testmini")
    dataset = benchmark.read(path)
    assert dataset.items[0].question.startswith("Hint:") and dataset.items[0].image.load().size == (64, 48)
    responses = {"1": answer("1.454"),         # rounds to 1.45 at precision 2
                 "2": answer("1.4"),           # "1.4" != "1.45"
                 "3": answer("B"),             # letter -> "5"
                 "4": answer("blue squares"),  # nearest choice by edit distance
                 "5": answer("12.0"),          # str(int(12.0)) = "12"
                 "6": answer("twelve")}        # no number
    lines = [{"id": k, "response": v} for k, v in responses.items()]
    records = {r["id"]: r for r in scoring.rescore(benchmark, dataset, lines, "test")}
    assert [records[k]["correct"] for k in "123456"] == [True, False, True, True, True, False]
    assert records["4"]["decided_by"] == "choice_nearest" and records["1"]["decided_by"] == "float_precision"
    result = summary.summarize(benchmark, dataset, list(records.values()))
    assert result["overall"] == pytest.approx(400 / 6)
    assert result["by_answer_type"]["float"]["accuracy"] == 50 and result["by_task"]["geometry"]["accuracy"] == 100
    assert result["by_skills"]["arithmetic reasoning"]["total"] == 6


def test_mathverse_version_selection_and_math_matching(tmp_path):
    rows = []
    for version in ("Vision Only", "Text Dominant"):
        for k, (question_type, gold) in enumerate([("multi-choice", "B"), ("free-form", "\\frac{1}{2}"),
                                                   ("free-form", "3")]):
            rows.append({"sample_index": f"{version[0]}{k}", "problem_index": str(k), "problem_version": version,
                         "question": "q", "image": f"images/{k}.png", "answer": gold, "question_type": question_type,
                         "metadata": {"split": "testmini", "source": "s", "subject": "Plane Geometry",
                                      "subfield": "Angle"},
                         "query_wo": "wo", "query_cot": f"Solve problem {k} shown in the image."})
    os.makedirs(tmp_path / "images")
    for k in range(3):
        (tmp_path / "images" / f"{k}.png").write_bytes(png(k))
    path = write_json(str(tmp_path / "testmini.json"), rows)
    vision_only = registry.get("mathverse_testmini")
    dataset = vision_only.read(path)
    assert [item.id for item in dataset.items] == ["V0", "V1", "V2"]
    result = score_all(vision_only, dataset, {"V0": answer("B"), "V1": answer("0.5"), "V2": answer("4")})
    assert result["overall"] == pytest.approx(200 / 3)
    everything = registry.get("mathverse_testmini:version=all")
    assert len(everything.read(path).items) == 6
    with pytest.raises(registry.DataError, match="no rows of version 'Vision Dominant'"):
        registry.get("mathverse_testmini:version=Vision Dominant").read(path)


def wemath_rows(problems):
    """problems: (steps, [step verdicts], composite verdict); the right answer is always "B"."""
    rows = []
    for number, (steps, step_right, multi_right) in enumerate(problems, start=1):
        group = f"{steps}steps_{number}"
        for key, right in [(f"{steps}steps_{k + 1}", r) for k, r in enumerate(step_right)] + \
                          [(f"{steps}steps_multi", multi_right)]:
            rows.append(({"ID": group, "split": "testmini", "knowledge concept": "Area", "question": f"{key}?",
                          "option": "A. 3;B. 4;C. 5", "answer": "B", "image_path": "img.png", "key": key,
                          "question number": len(rows)}, right))
    return rows


def test_wemath_four_dimensional_metrics_strict_and_loose(tmp_path):
    problems = [(2, [True, True], True),     # CM (strict and loose)
                (2, [True, True], False),    # IG
                (2, [True, False], False),   # IK
                (2, [True, False], True),    # RM strict; CM loose (a step right)
                (3, [False, False, False], True)]  # RM strict and loose
    rows = wemath_rows(problems)
    (tmp_path / "img.png").write_bytes(png(1))
    path = write_json(str(tmp_path / "testmini.json"), [row for row, _ in rows])
    benchmark = registry.get("wemath_testmini")
    dataset = benchmark.read(path)
    assert dataset.items[0].id == "2steps_1/2steps_1" and dataset.items[0].options == ("3", "4", "5")
    responses = {f"{row['ID']}/{row['key']}": answer("B" if right else "C") for row, right in rows}
    result = score_all(benchmark, dataset, responses)
    assert (result["IK"], result["IG"], result["problems"]) == (1, 1, 5)
    strict, loose = result["strict"], result["loose"]
    assert (strict["CM"], strict["RM"], loose["CM"], loose["RM"]) == (1, 2, 2, 1)
    assert strict["score"] == pytest.approx(30.0) and loose["score"] == pytest.approx(50.0)  # (5-0.5-RM-1)/5
    assert result["overall"] == strict["score"]
    assert strict["RM_rate"] == pytest.approx(200 / 3) and loose["RM_rate"] == pytest.approx(100 / 3)
    assert strict["IK_rate"] == 20 and strict["IG_rate"] == 20 and loose["CM_rate"] == 40
    assert result["row_accuracy"] == pytest.approx(100 * 9 / 16)
    assert result["two_step"]["accuracy"] == 50 and result["three_step"]["accuracy"] == 100
    assert result["one_step"]["correct"] == 6 and result["one_step"]["total"] == 11
    # A composite with a row missing is left out of the four dimensions and counted.
    partial = score_all(benchmark, dataset, {k: v for k, v in responses.items() if k != "2steps_2/2steps_multi"})
    assert partial["problems"] == 4 and partial["incomplete_problems"] == 1 and partial["missing"] == 1


def test_mathvision_splits_choices_and_free_form(tmp_path):
    rows = [{"id": "1", "question": "<image1>Which?", "options": ["1", "2", "3", "4", "5"], "image": "images/1.jpg",
             "answer": "C", "solution": "", "level": 1, "subject": "algebra"},
            {"id": "2", "question": "<image1>How long?", "options": [], "image": "images/1.jpg", "answer": "2.5",
             "level": 2, "subject": "geometry"},
            {"id": "3", "question": "<image1>Ratio?", "options": [], "image": "images/1.jpg", "answer": "\\frac{1}{3}",
             "level": 2, "subject": "geometry"},
            {"id": "4", "question": "<image1>Area?", "options": [], "image": "images/1.jpg", "answer": "2.5",
             "level": 1, "subject": "algebra"}]
    os.makedirs(tmp_path / "images")
    (tmp_path / "images" / "1.jpg").write_bytes(png(3))
    for name, subset in (("testmini.jsonl", rows), ("test.jsonl", rows[:2])):
        with open(tmp_path / name, "w") as f:
            f.writelines(__import__("json").dumps(r) + "\n" for r in subset)
    benchmark = registry.get("mathvision")
    dataset = benchmark.read(str(tmp_path))
    assert len(dataset.items) == 4 and "<image1>" not in dataset.items[0].question
    assert len(registry.get("mathvision:split=test").read(str(tmp_path)).items) == 2
    responses = {"1": answer("3"),           # the option's text
                 "2": answer("2.504"),       # equal at two decimals
                 "3": answer("1/3"),         # math-verify
                 "4": answer("2.6")}
    lines = [{"id": k, "response": v} for k, v in responses.items()]
    records = {r["id"]: r for r in scoring.rescore(benchmark, dataset, lines, "test")}
    assert [records[k]["correct"] for k in "1234"] == [True, True, True, False]
    assert records["1"]["decided_by"] == "choice_text" and records["2"]["decided_by"] == "numeric_2dp"
    result = summary.summarize(benchmark, dataset, list(records.values()))
    assert result["overall"] == 75 and result["by_subject"]["algebra"]["accuracy"] == 50
    assert result["by_level"]["2"]["accuracy"] == 100 and result["by_subject_level"]["algebra / level 1"]["total"] == 2


def test_mathvision_values_expressions_and_reads_a_final_option_letter(tmp_path):
    rows = [{"id": "1", "question": "Which?", "options": ["1", "2", "3", "4", "5"], "image": "1.jpg", "answer": "C"},
            {"id": "2", "question": "How long?", "options": [], "image": "1.jpg", "answer": "\\sqrt{2}"}]
    (tmp_path / "1.jpg").write_bytes(png(3))
    with open(tmp_path / "testmini.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    benchmark = registry.get("mathvision")
    choice, free = benchmark.read(str(tmp_path / "testmini.jsonl")).items
    assert benchmark.check(choice, "Thus (C).").correct and benchmark.check(choice, "so the answer: C").correct
    assert not benchmark.check(choice, "Thus (B).").correct
    assert benchmark.check(free, "1.41") == rewards.Match(True, "numeric_2dp")
    assert not benchmark.check(free, "1.42").correct


def test_release_parquet_ids_tasks_and_bare_answers(tmp_path):
    rows = [{"data_source": "chart", "images": [{"bytes": png(1), "path": None}],
             "extra_info": {"question": "<image>What is the total?", "answer": "7", "index": 0}},
            {"data_source": "thinklite_eureka", "images": [{"bytes": png(2), "path": None}],
             "extra_info": {"question": "<image>Half of one?", "answer": "\\frac{1}{2}", "index": 5}}]
    path = write_parquet(str(tmp_path / "eval.parquet"), rows)
    benchmark = registry.get("codedance_parquet")
    dataset = benchmark.read(path)
    assert [item.id for item in dataset.items] == ["chart/0", "thinklite_eureka/5"]
    assert dataset.items[0].question == "What is the total?" and dataset.items[1].task == "math"
    # Bare answers (another system's outputs) are scored too.
    result = score_all(benchmark, dataset, {"chart/0": "7", "thinklite_eureka/5": "<think>x</think><answer>0.5</answer>"})
    assert result["overall"] == 100 and result["by_data_source"]["chart"]["correct"] == 1


def test_synthetic_needs_no_data_and_is_stable():
    first = registry.get("synthetic:num=6:seed=3").read(None)
    again = registry.get("synthetic:num=3:seed=3").read(None)
    assert [i.id for i in first.items][:3] == [i.id for i in again.items]
    assert {i.fields["category"] for i in first.items} <= {"exists", "count_few", "bar_labelled", "search_large",
                                                           "count", "largest", "count_many", "bar_value",
                                                           "search_small"}
    assert {i.fields["difficulty"] for i in first.items} <= {"easy", "hard"}
    result = score_all(registry.get("synthetic:num=6:seed=3"), first,
                       {item.id: answer(item.gold) for item in first.items})
    assert result["overall"] == 100


def test_judge_decides_only_free_form_answers_the_rules_call_wrong(tmp_path):
    import threading

    from codedance_jax.rewards.judge import Judge, JudgeConfig
    from rewards.test_judge import ChatServer  # the rewards tests' local chat-completions server

    server = ChatServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        judge = Judge(JudgeConfig(base_url=server.url, max_retries=0, timeout_s=5.0))
        rows = [{"data_source": "vstar", "images": [{"bytes": png(k), "path": None}],
                 "extra_info": {"question": "Colour?", "answer": "pink", "index": k}} for k in range(3)]
        benchmark = registry.get("codedance_parquet")
        dataset = benchmark.read(write_parquet(str(tmp_path / "eval.parquet"), rows))
        lines = [{"id": "vstar/0", "response": answer("it is pink")},   # rules: different text; judge: same
                 {"id": "vstar/1", "response": answer("pink")},         # rules decide
                 {"id": "vstar/2", "response": answer("green")}]        # judge: different
        records = scoring.rescore(benchmark, dataset, lines, "test", judge=judge)
        assert [(r["correct"], r["decided_by"]) for r in records] == [(True, "judge"), (True, "string"),
                                                                       (False, "judge")]
        assert server.requests == 2
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name, content", [("counts.parquet", b"PAR1 not really parquet"),
                                           ("hr.tsv", b"index\tquestion\n0\t\xff\xfe broken utf-8\n")])
def test_a_corrupt_file_is_named_not_a_traceback(tmp_path, name, content):
    from codedance_jax.eval.items import DataError
    from codedance_jax.eval.tables import read_rows
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"{path}: cannot be read as"):
        read_rows(str(path))


def test_a_prediction_file_that_repeats_an_id_is_refused():
    from codedance_jax.eval.items import DataError
    benchmark = registry.get("synthetic:num=2")
    dataset = benchmark.read(None)
    first = dataset.items[0].id
    lines = [{"id": first, "response": "1"}, {"id": dataset.items[1].id, "response": "2"}, {"id": first, "response": "3"}]
    with pytest.raises(DataError, match=f"preds.jsonl: id '{first}' is predicted twice \\(lines 1 and 3\\)"):
        scoring.rescore(benchmark, dataset, lines, "preds.jsonl")
