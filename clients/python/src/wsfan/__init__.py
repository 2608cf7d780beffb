"""wsfan producers: document progress to the progress queue, messages to channels.

Only boto3 is needed; credentials and Region come from boto3's usual chain.
"""

from .errors import PublishError, WsfanError
from .progress import ProgressReporter
from .publish import Publisher

__all__ = ["ProgressReporter", "Publisher", "PublishError", "WsfanError"]
__version__ = "0.1.0"
