from piccolo.apps.migrations.auto.migration_manager import MigrationManager
from piccolo.columns.column_types import Text
from piccolo.columns.indexes import IndexMethod

ID = "2026-12-04T15:55:00:000000"
VERSION = "1.38.0"
DESCRIPTION = "Analysis.gate: the intended-use gate's result, kept when a clinician overrides it"


async def forwards():
    manager = MigrationManager(
        migration_id=ID, app_name="clinic", description=DESCRIPTION
    )

    manager.add_column(
        table_class_name="Analysis",
        tablename="analysis",
        column_name="gate",
        db_column_name="gate",
        column_class_name="Text",
        column_class=Text,
        params={
            "default": "",
            "null": False,
            "primary_key": False,
            "unique": False,
            "index": False,
            "index_method": IndexMethod.btree,
            "choices": None,
            "db_column_name": None,
            "secret": False,
        },
        schema=None,
    )

    return manager
