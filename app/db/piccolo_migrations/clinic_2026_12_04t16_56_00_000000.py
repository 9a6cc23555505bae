from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Text, Varchar
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-04T16:56:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Analysis: the patient identifier and file name sealed, with a blind index"

_COMMON = {
    "null": False,
    "primary_key": False,
    "unique": False,
    "index_method": IndexMethod.btree,
    "choices": None,
    "db_column_name": None,
    "secret": False,
}


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="clinic", description=DESCRIPTION
    )
    for name, column_class, extra in (
        ("patient_sealed", Text, {"default": "", "index": False}),
        ("patient_index", Varchar, {"default": "", "index": True, "length": 64}),
        ("filename_sealed", Text, {"default": "", "index": False}),
    ):
        manager.add_column(
            table_class_name="Analysis",
            tablename="analysis",
            column_name=name,
            db_column_name=name,
            column_class_name=column_class.__name__,
            column_class=column_class,
            params={**_COMMON, **extra},
            schema=None,
        )
    return manager
