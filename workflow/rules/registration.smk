# Registration of the analogy cases (paper sec. 4.7 and 5.3): each moving image (source)
# against the confocal under each measure, scored against the landmarks (Table 2), and
# the capture range from perturbed starts.


rule register:
    input:
        unpack(registration_inputs),
    output:
        f"{R}/registration/{{case}}/{{source}}.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
        source="sparse|sparse_denoised|hertzmann|raw",
    params:
        registration=REGISTRATION,
        seed=config["seed"],
    log:
        f"{R}/logs/register/{{case}}_{{source}}.log",
    benchmark:
        f"{R}/benchmarks/register/{{case}}_{{source}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV
    script:
        "../../scripts/register.py"


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        errors=f"{R}/registration/{{case}}/errors.csv",
        figure=report(
            f"{R}/figures/registration/{{case}}.png",
            caption="../report/registration_figure.rst",
            category="Registration",
            subcategory="{case}",
        ),
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        sources=registration_sources(),
        confidence=config["registration"]["confidence"],
    log:
        f"{R}/logs/evaluate/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/evaluate/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/evaluate.py"


rule table2:
    input:
        errors=lambda wc: [f"{R}/registration/{n}/errors.csv" for n in usable_cases("analogy")],
        frames=lambda wc: [f"{R}/preprocessed/{n}/frame.json" for n in usable_cases("analogy")],
        checks=check_files("analogy"),
    output:
        long=f"{R}/tables/table2_registration_long.csv",
        csv=f"{R}/tables/table2_registration.csv",
        md=report(
            f"{R}/tables/table2_registration.md",
            caption="../report/table2.rst",
            category="Tables",
        ),
        tex=f"{R}/tables/table2_registration.tex",
        plot=report(
            f"{R}/figures/table2_errors.png",
            caption="../report/table2.rst",
            category="Tables",
        ),
        nonrigid_csv=f"{R}/tables/nonrigid.csv",
        nonrigid_md=report(
            f"{R}/tables/nonrigid.md",
            caption="../report/nonrigid.rst",
            category="Tables",
        ),
        nonrigid_tex=f"{R}/tables/nonrigid.tex",
    params:
        px_per_um=config["preprocess"]["px_per_um"],
        routes=table2_routes(),  # the columns a failed case fills with its reason
    log:
        f"{R}/logs/table2.log",
    benchmark:
        f"{R}/benchmarks/table2.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../../scripts/table2.py"


rule capture_range:
    input:
        unpack(registration_inputs),
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
        frame=f"{R}/preprocessed/{{case}}/frame.json",
        answers=expand(
            f"{R}/registration/{{{{case}}}}/{{source}}.json", source=registration_sources()
        ),
    output:
        expand(f"{R}/registration/{{{{case}}}}/capture_{{source}}.csv", source=capture_sources()),
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        optimiser=REGISTRATION["optimiser"],
        start_search=REGISTRATION["start_search"],
        capture=config["registration"]["capture_range"],
        confidence=config["registration"]["confidence"],
        sources=registration_sources(),  # every answer: the consensus
        tested=capture_sources(),
        seed=config["seed"],
    log:
        f"{R}/logs/capture_range/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/capture_range/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=120,
    conda:
        ENV
    script:
        "../../scripts/capture_range.py"


rule capture_table:
    input:
        lambda wc: [
            f"{R}/registration/{n}/capture_{s}.csv"
            for n in usable_cases("analogy")
            for s in capture_sources()
        ],
    output:
        summary=report(
            f"{R}/tables/capture_range.csv",
            caption="../report/capture_range.rst",
            category="Tables",
        ),
        trials=f"{R}/tables/capture_range_trials.csv",
        plot=report(
            f"{R}/figures/capture_range.png",
            caption="../report/capture_range.rst",
            category="Registration",
        ),
    params:
        success_um=config["registration"]["capture_range"]["success_um"],
    log:
        f"{R}/logs/capture_table.log",
    benchmark:
        f"{R}/benchmarks/capture_table.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../../scripts/capture_table.py"


rule global_search:
    input:
        unpack(global_search_inputs),
    output:
        f"{R}/registration/{{case}}/global.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        case=case_record,
        search=config["registration"]["global_search"],
        crop_margin_um=config["preprocess"]["margin_um"],  # refined as a landmark-started pair
        optimiser=REGISTRATION["optimiser"],
        nonrigid=REGISTRATION["nonrigid"],
        confidence=config["registration"]["confidence"],
    log:
        f"{R}/logs/global_search/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/global_search/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=20,
    conda:
        ENV
    script:
        "../../scripts/global_search.py"


rule global_table:
    input:
        results=lambda wc: [f"{R}/registration/{n}/global.json" for n in usable_cases("analogy")],
        checks=check_files("analogy"),
    output:
        report(
            f"{R}/tables/global_search.csv",
            caption="../report/global_search.rst",
            category="Tables",
        ),
    log:
        f"{R}/logs/global_table.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        ENV
    script:
        "../../scripts/global_table.py"
