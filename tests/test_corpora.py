"""Any corpus by YAML: headerless files, literal TSV, CSV quoting that never swallows a line, single
sentences, lines without a gold label, unique prediction ids, task names that fit a file name."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from afqmc.config.schema import check_config
from afqmc.data.components import MAX_TASK_BYTES, build_dataset
from afqmc.data.datasets import PairCollator
from afqmc.data.reading import SkippedLines, read_examples
from afqmc.errors import ConfigError, DataError
from afqmc.files import atomic_write

from .conftest import compose_cfg, write_jsonl

ROWS = [("不要借了我是试试看能否操作的", "借款审核期间能否取消借款", "0"), ("花呗怎么还款", "如何还花呗", "1")] * 3


def corpus_cfg(root, fmt="tsv", *overrides):
    """AFQMC's labels and column names, in a CSV or TSV of one split."""
    return compose_cfg(
        [
            f"dataset.root={root}",
            f"dataset.format={fmt}",
            f"dataset.splits.train=train.{fmt}",
            f"dataset.splits.dev=train.{fmt}",
            "dataset.splits.test=null",
            "dataset.download=null",
            *overrides,
        ]
    )


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- header: true | false
def test_headerless_tsv_by_position(tmp_path, local_bert):
    write_lines(tmp_path / "train.tsv", ["\t".join(r) for r in ROWS])
    cfg = corpus_cfg(tmp_path, "tsv", "dataset.header=false", *POSITIONS, f"model.checkpoint={local_bert}")
    check_config(cfg)
    examples = build_dataset(cfg.dataset, "train").examples
    assert [(e["text_a"], e["text_b"], e["label"]) for e in examples] == [(a, b, int(y)) for a, b, y in ROWS]


POSITIONS = [
    "dataset.columns.text_a=0",
    "dataset.columns.text_b=1",
    "dataset.columns.label=2",
    "dataset.columns.id=null",
]


def test_header_error_suggests_header_false_when_the_first_row_is_data(tmp_path):
    write_lines(tmp_path / "train.tsv", ["\t".join(r) for r in ROWS])
    cfg = corpus_cfg(tmp_path, "tsv", "dataset.columns.text_a=q1", "dataset.columns.text_b=q2")
    with pytest.raises(
        DataError,
        match=r"train.tsv:1: the header has no column 'q1' "
        r"\(columns: 不要借了我是试试看能否操作的, 借款审核期间能否取消借款, 0\); "
        r"line 1 looks like data: for a file without a header, set dataset.header=false",
    ):
        build_dataset(cfg.dataset, "train")
    write_lines(tmp_path / "train.tsv", ["q1\tq_2\tlabel", "a\tb\t1"])  # a header with a typo: no such advice
    with pytest.raises(DataError, match=r"train.tsv:1: the header has no column 'q2' \(columns: q1, q_2, label\)$"):
        build_dataset(cfg.dataset, "train")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["dataset.format=tsv", "dataset.header=false"],
            r"dataset.columns.text_a='sentence1' is invalid; with dataset.header=false, columns are 0-based positions",
        ),
        (["dataset.format=tsv", "dataset.columns.label=2"], r"dataset.columns.label=2 is invalid; dataset.header=true"),
        (["dataset.columns.text_a=0"], r"dataset.columns.text_a=0 is invalid; JSON lines name their fields"),
        (
            ["dataset.columns.text_b=sentence1"],
            r"dataset.columns.text_b='sentence1' is invalid; dataset.columns.text_a",
        ),
        (["dataset.columns.text_a=-1"], r"dataset.columns.text_a=-1 is invalid; expected a name, or a 0-based"),
        (["dataset.quoting=rfc"], r"dataset.quoting='rfc' is invalid; expected null or one of 'none', 'csv'$"),
        (['dataset.no_gold_label=["1"]'], r"dataset.no_gold_label=\['1'\] is invalid; '1' is in dataset.label_map"),
    ],
)
def test_columns_must_suit_the_header(local_bert, overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(compose_cfg([f"model.checkpoint={local_bert}", *overrides]))


# ---------------------------------------------------------------- quoting: none | csv
QUOTED = '"饿了么"红包怎么领'


def hundred_lines(tmp_path, bad_line: str, at: int = 7):
    """A header and 100 pairs; pair `at` (its file line) is `bad_line`."""
    lines = ["q1\tq2\tlabel"] + [f"问题{i}\t问题{i}的说法\t{i % 2}" for i in range(100)]
    lines[at - 1] = bad_line
    return write_lines(tmp_path / "train.tsv", lines)


def test_tsv_is_literal_by_default(tmp_path):
    """Quotes are text: a leading quote keeps its quotes, an unclosed one swallows nothing."""
    hundred_lines(tmp_path, f"{QUOTED}\t怎么领红包\t1", at=3)
    with open(tmp_path / "train.tsv", "a", encoding="utf-8") as f:
        f.write('"没有闭合的引号\t问题\t0\n')
    cfg = corpus_cfg(tmp_path, "tsv", "dataset.columns.text_a=q1", "dataset.columns.text_b=q2")
    examples = build_dataset(cfg.dataset, "train").examples
    assert len(examples) == 101 and examples[1]["text_a"] == QUOTED and examples[-1]["text_a"] == '"没有闭合的引号'


def test_csv_quoting_reports_an_unclosed_quote_at_its_own_line(tmp_path):
    hundred_lines(tmp_path, '"一句话\t后面\t1', at=7)
    cfg = corpus_cfg(tmp_path, "tsv", "dataset.quoting=csv", "dataset.columns.text_a=q1", "dataset.columns.text_b=q2")
    with pytest.raises(DataError, match=r"train.tsv:7: bad tsv line \(a quoted field is not closed on its line;"):
        build_dataset(cfg.dataset, "train")
    cfg.dataset.on_bad_line = "skip"
    ds = build_dataset(cfg.dataset, "train")
    assert len(ds) == 99 and ds.skipped_lines == 1  # 99 rows + 1 bad line = the 100 lines after the header


def test_csv_quoting_closed_three_lines_later_loses_no_line(tmp_path):
    """The issue's 100 rows that became 97: each line is a record of its own."""
    lines = ["q1,q2,label"] + [f"问题{i},说法{i},{i % 2}" for i in range(100)]
    lines[7] = '"一句话,开头,1'
    lines[10] = '结尾",说法,0'
    write_lines(tmp_path / "train.csv", lines)
    cfg = corpus_cfg(
        tmp_path, "csv", "dataset.on_bad_line=skip", "dataset.columns.text_a=q1", "dataset.columns.text_b=q2"
    )
    ds = build_dataset(cfg.dataset, "train")
    assert len(ds) + ds.skipped_lines == 100 and ds.skipped_lines == 1  # line 8's unclosed quote
    assert ds.examples[8]["text_a"] == '结尾"'  # a quote inside an unquoted field is text, as in RFC 4180


def test_csv_quoting_keeps_standard_quoted_fields_and_refuses_text_after_a_closing_quote(tmp_path):
    write_lines(tmp_path / "train.csv", ["q1,q2,label", '"你好,世界","他说""好""",1', f"{QUOTED},b,0"])
    cfg = corpus_cfg(tmp_path, "csv", "dataset.columns.text_a=q1", "dataset.columns.text_b=q2")
    read = read_examples(tmp_path / "train.csv", cfg.dataset, labeled=True)
    first = next(read)
    assert (first["text_a"], first["text_b"]) == ("你好,世界", '他说"好"')
    with pytest.raises(DataError, match=r"train.csv:3: bad csv line \(',' expected after '\"'; dataset.quoting=none"):
        next(read)


def test_a_short_row_says_what_is_missing_without_contradiction(tmp_path):
    write_lines(tmp_path / "train.tsv", ["q1\tq2\tlabel", "你好\t您好\t1", "只有一句\t1"])
    cfg = corpus_cfg(tmp_path, "tsv", "dataset.columns.text_a=q1", "dataset.columns.text_b=q2")
    with pytest.raises(
        DataError, match=r"train.tsv:3: missing field 'label' \(the line has 2 fields, the header \(line 1\) has 3\)$"
    ):
        build_dataset(cfg.dataset, "train")
    write_lines(tmp_path / "train.tsv", ["q1\tq2\tlabel", "你好\t您\t好\t1"])
    with pytest.raises(
        DataError, match=r"train.tsv:2: the line has 4 fields, the header \(line 1\) has 3; a tab inside"
    ):
        build_dataset(cfg.dataset, "train")


CELLS = st.lists(
    st.sampled_from(['"', '"a\tb"', '"a,b"', 'x"y', '"q"r', "a\rb", "0", "1", "", " ", "借呗"]), max_size=4
)
LINE = st.one_of(CELLS.map(lambda c: "\t".join(c)), CELLS.map(lambda c: ",".join(c)), st.text(max_size=12)).map(
    lambda s: s.replace("\n", "")
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt=st.sampled_from(["csv", "tsv"]),
    quoting=st.sampled_from(["none", "csv"]),
    header=st.booleans(),
    lines=st.lists(LINE, min_size=1, max_size=8),
)
def test_every_line_is_a_row_a_bad_line_or_blank(tmp_path, fmt, quoting, header, lines):
    """Whatever the quotes: examples + bad lines + blank lines (+ the header) = the file's lines."""
    path = tmp_path / "split.txt"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    columns = {"text_a": 0, "text_b": 1, "label": 2, "id": None}
    if header:
        columns = {"text_a": "a", "text_b": "b", "label": "y", "id": None}
        lines = ["a\tb\ty" if fmt == "tsv" else "a,b,y", *lines]
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    cfg = OmegaConf.create(
        {"format": fmt, "header": header, "quoting": quoting, "on_bad_line": "skip", "columns": columns}
        | {"label_map": {"0": 0, "1": 1}}
    )
    skipped = SkippedLines()
    try:
        examples = list(read_examples(path, cfg, labeled=True, skipped=skipped))
    except DataError as e:  # a file-level problem: the header, or a first row too narrow for the columns
        assert "header" in str(e) if header else "the first row has" in str(e), e
        return
    blank = sum(1 for line in lines if not line.strip(" \r"))
    assert len(examples) + skipped.count + blank + header == len(lines)


# ---------------------------------------------------------------- single sentences
def test_single_sentence_task_tokenizes_one_text(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer

    write_jsonl(
        tmp_path / "train.json", [{"sentence": "借呗怎么还款", "label": "102"}, {"sentence": "花呗", "label": "100"}]
    )
    cfg = compose_cfg(["dataset=tnews", f"dataset.root={tmp_path}", "dataset.splits.dev=train.json"]).dataset
    ds = build_dataset(cfg, "train")
    assert [(e["text_a"], e["text_b"], e["label"]) for e in ds.examples] == [
        ("借呗怎么还款", None, 2),
        ("花呗", None, 0),
    ]
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ds.encode(tok, 64)
    encoded = PairCollator(tok, 64)([ds[0], ds[1]])
    raw = PairCollator(tok, 64)([{**ds.examples[i], "index": i} for i in (0, 1)])  # streaming: tokenized here
    for batch in (encoded, raw):
        assert batch["input_ids"].shape == (2, 8)  # [CLS] 6 characters [SEP]: one text, one separator
        assert batch["token_type_ids"].sum() == 0 and batch["labels"].tolist() == [2, 0]


# ---------------------------------------------------------------- lines without a gold label
def test_no_gold_label_lines_are_left_out_and_counted_not_bad(tmp_path):
    rows = [{"sentence1": "甲", "sentence2": "乙", "label": y} for y in ("neutral", "-", "entailment", "-", "-")]
    write_jsonl(tmp_path / "dev.json", rows)
    cfg = compose_cfg(["dataset=cmnli", f"dataset.root={tmp_path}"]).dataset  # on_bad_line=error
    ds = build_dataset(cfg, "dev")
    assert [e["label"] for e in ds.examples] == [2, 1] and (ds.no_gold_label, ds.skipped_lines) == (3, 0)
    cfg.splits.train, cfg.streaming = "dev.json", True
    stream = build_dataset(cfg, "train")  # looks at the first example only ...
    assert stream.count() == 2 and stream.no_gold_label == 3  # ... and counts on its pass over the file
    write_jsonl(tmp_path / "dev.json", rows[1:2])
    with pytest.raises(DataError, match=r"dev.json: no examples \(all 1 lines with data have no gold label"):
        build_dataset(cfg, "dev")


# ---------------------------------------------------------------- prediction ids
@pytest.mark.parametrize("on_bad_line", ["error", "skip"])
def test_mixed_ids_and_positions_never_collide(tmp_path, pairs_dir, on_bad_line):
    """Line 2 has no id and is numbered 1 by position; line 4 says id 1: the run stops naming both."""
    rows = [{"id": 0, "sentence1": "a", "sentence2": "b"}, {"sentence1": "c", "sentence2": "d"}]
    rows += [{"id": 5, "sentence1": "e", "sentence2": "f"}, {"id": 1, "sentence1": "g", "sentence2": "h"}]
    write_jsonl(pairs_dir / "test.json", rows)
    cfg = compose_cfg([f"dataset.root={pairs_dir}", f"dataset.on_bad_line={on_bad_line}"]).dataset
    with pytest.raises(
        DataError,
        match=r"test.json:4: duplicate prediction id 1: line 2 \(no field 'id', numbered 1 by position\) "
        r"and line 4 \(id 1\); each line needs an id of its own$",
    ):
        build_dataset(cfg, "test")


def test_duplicate_explicit_ids_name_both_lines(tmp_path, pairs_dir):
    rows = [{"id": "7", "sentence1": "a", "sentence2": "b"}, {"id": 8, "sentence1": "c", "sentence2": "d"}]
    write_jsonl(pairs_dir / "test.json", [*rows, {"id": 7, "sentence1": "e", "sentence2": "f"}])
    with pytest.raises(
        DataError, match=r"test.json:3: duplicate prediction id 7: line 1 \(id '7'\) and line 3 \(id 7\)"
    ):
        build_dataset(compose_cfg([f"dataset.root={pairs_dir}"]).dataset, "test")
    write_jsonl(pairs_dir / "test.json", [*rows, {"sentence1": "e", "sentence2": "f"}])  # numbered 2: no clash
    assert [e["id"] for e in build_dataset(compose_cfg([f"dataset.root={pairs_dir}"]).dataset, "test").examples] == [
        "7",
        8,
        2,
    ]


def test_an_id_must_be_text_or_an_integer(pairs_dir):
    write_jsonl(pairs_dir / "test.json", [{"id": [1], "sentence1": "a", "sentence2": "b"}])
    with pytest.raises(
        DataError, match=r"test.json:1: field 'id' \(the id\) must be a string or an integer, got \[1\]"
    ):
        build_dataset(compose_cfg([f"dataset.root={pairs_dir}"]).dataset, "test")


# ---------------------------------------------------------------- dataset.task names a file
def test_task_name_fits_a_file_name(local_bert, tmp_path):
    with pytest.raises(ConfigError, match=rf"dataset.task='x{{300}}' is invalid; .*of at most {MAX_TASK_BYTES} bytes"):
        check_config(compose_cfg([f"model.checkpoint={local_bert}", f"dataset.task={'x' * 300}"]))
    cfg = compose_cfg([f"model.checkpoint={local_bert}"])
    cfg.dataset.task = "问" * 80  # 80 characters, 240 bytes in UTF-8
    with pytest.raises(ConfigError, match=r"dataset.task='问{80}' is invalid"):
        check_config(cfg)
    longest = "x" * MAX_TASK_BYTES
    check_config(compose_cfg([f"model.checkpoint={local_bert}", f"dataset.task={longest}"]))
    with atomic_write(tmp_path / "predictions" / f"{longest}_predict.json") as tmp:  # the way predict() writes it
        tmp.write_text(json.dumps({"id": 0, "label": "1"}))
    assert (tmp_path / "predictions" / f"{longest}_predict.json").is_file()


@pytest.fixture
def local_bert(tmp_path_factory):
    """A local checkpoint directory: the schema reads only its config.json."""
    path = tmp_path_factory.mktemp("bert")
    (path / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 512}))
    return path
