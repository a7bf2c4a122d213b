"""Entry point: python run.py [overrides]. See README.md and conf/config.yaml."""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import afqmc  # noqa: F401  (registers the config resolvers)
from afqmc.errors import AfqmcError

log = logging.getLogger("afqmc")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Trains one run; returns its best dev metric so that Hydra sweepers can optimize it."""
    from afqmc.registry import build_trainer  # torch and transformers load only past --help/--cfg

    try:
        return build_trainer(cfg, HydraConfig.get().runtime.output_dir).fit()
    except AfqmcError as e:  # the message says what to fix; a traceback would bury it
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(1)


if __name__ == "__main__":
    main()
