# Preprocessing. Analogy track: green channel, confocal crop around the TEM footprint,
# both resampled to preprocess.px_per_um (paper: 14.52), landmarks in that frame, rough
# similarity start.
# Fiducial track: bead channel as float at native sampling (resampling to 14.52 px/um
# would shrink a 100 nm bead to 1.5 px).


# What the case check and preprocessing need to judge an input (the smallest usable image).
CHECKS = {
    "preprocess": settings("preprocess", ("px_per_um", "margin_um")),
    "patch_size": config["analogy"]["patch_size"],
    "fiducials": settings("fiducials", ("bead_diameter_nm", "em_psf_fwhm_nm", "lm_psf_fwhm_nm")),
}


checkpoint check_case:
    """Every case is checked first; a bad one is reported failed, never stops the run."""
    input:
        unpack(existing_case_files),
    output:
        f"{R}/checks/{{case}}.json",
    params:
        case=case_record,
        **CHECKS,
    log:
        f"{R}/logs/check_case/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/check_case/{{case}}.tsv"
    threads: 1
    localrule: True  # light (reading the files): where Snakemake runs, also with SLURM
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/check_case.py"


rule preprocess_analogy:
    input:
        unpack(case_files),
    output:
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
        start=f"{R}/preprocessed/{{case}}/start_transform.json",
        frame=f"{R}/preprocessed/{{case}}/frame.json",
    wildcard_constraints:
        case=constraint(cases_of("analogy")),
    params:
        case=case_record,
        **CHECKS,
    log:
        f"{R}/logs/preprocess/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/preprocess.py"


rule preprocess_fiducial:
    input:
        unpack(case_files),
    output:
        em=f"{R}/preprocessed/{{case}}/em.tif",
        lm=f"{R}/preprocessed/{{case}}/lm.tif",
        landmarks=f"{R}/preprocessed/{{case}}/landmarks.csv",
        frame=f"{R}/preprocessed/{{case}}/frame.json",
    wildcard_constraints:
        case=constraint(cases_of("fiducial")),
    params:
        case=case_record,
        **CHECKS,
    log:
        f"{R}/logs/preprocess/{{case}}.log",
    benchmark:
        f"{R}/benchmarks/preprocess/{{case}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV
    script:
        "../../scripts/preprocess.py"
