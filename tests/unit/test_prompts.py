from ptft.data.prompts import completion, few_shot_prompt, join_prompt_completion, render_prompt
from ptft.data.tasks import TASK_TYPES

NLI = TASK_TYPES["nli"]
REC = {"premise": "a cat sat .", "hypothesis": "a cat is here .", "label": 0}


def test_formats_are_the_papers_strings():
    assert (
        render_prompt(NLI, REC, "default")
        == "### Input_1: a cat sat .\n ### Input_2: a cat is here .\n ### Inference: "
    )
    assert render_prompt(NLI, REC, "instruct") == (
        "Consider the following texts: Text 1: a cat sat . Text 2: a cat is here . The relation is "
    )
    assert render_prompt(NLI, REC, "io") == "a cat sat . a cat is here ."
    qg = {"context": "c", "answerA": "a", "answerB": "b", "answerC": "x"}
    assert render_prompt(TASK_TYPES["question_generation"], qg, "default") == (
        "### Input: c\n ### Answer: Answer A: a Answer B: bAnswer C: x\n ### Question: "
    )


def test_boundary_space_moves_to_the_completion():
    assert join_prompt_completion("### Inference: ", "entailment") == ("### Inference:", " entailment")
    assert join_prompt_completion("a b", "c") == ("a b", " c")
    assert join_prompt_completion("a b", " c") == ("a b", " c")


def test_few_shot_prompt_layout():
    shot = {"premise": "p .", "hypothesis": "h .", "label": 2}
    text = few_shot_prompt(NLI, [shot], REC, "io")
    assert text == "p . h . contradiction\n\na cat sat . a cat is here ."
    assert few_shot_prompt(NLI, [], REC, "io") == "a cat sat . a cat is here ."


def test_completion_per_task_type():
    assert [completion(NLI, {**REC, "label": i}) for i in (0, 1, 2)] == ["entailment", "neutral", "contradiction"]
    assert completion(TASK_TYPES["paraphrase"], {"sentence1": "a", "sentence2": "b", "label": 1}) == "yes"
    mc = {"query": "q", "choices": ["a cat", "the dog"], "label": 1}
    assert completion(TASK_TYPES["multiple_choice"], mc) == "the dog"
    assert completion(TASK_TYPES["summary"], {"document": "d .", "summary": "s ."}) == "s ."
    assert completion(TASK_TYPES["question_generation"], {"context": "c", "question": "why ?"}) == "why ?"
    assert completion(TASK_TYPES["text"], {"text": "a document ."}) == "a document ."
