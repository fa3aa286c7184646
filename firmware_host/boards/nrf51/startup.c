#include "../cortexm/startup.inc"
