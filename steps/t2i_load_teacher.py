"""Step: a user's Stable Diffusion 1.5 / 2.x folder (teacher.path), loaded component by component, offline."""
from typing import Annotated

from zenml import step

from components.t2i.parts import SDParts
from components.t2i.run import stage_user_teacher
from steps.materializers import SDPartsMaterializer
from steps.names import T2I_BASE


@step(output_materializers={T2I_BASE: SDPartsMaterializer})
def t2i_load_teacher(path: str) -> Annotated[SDParts, T2I_BASE]:
    return stage_user_teacher(path)
