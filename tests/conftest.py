import sys
from pathlib import Path

# Test support modules (hubharness, chainfixture) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
