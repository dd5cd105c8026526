/* Loads a SavedModel with TensorFlow's C API, the loader TF Serving is built on, and runs one signature.
 *
 * usage: run_signature EXPORT_DIR INPUT N H W C IN.f32 OUT_PREFIX OUTPUT...
 *   INPUT, OUTPUT: graph tensors "operation:index" (the signature's, from its SignatureDef);
 *   IN.f32: N*H*W*C float32 pixels; each OUTPUT k is written raw to OUT_PREFIX.k.
 * Exit status 0 on success, 2 with one line on stderr otherwise.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

static void check(TF_Status *status, const char *what) {
  if (TF_GetCode(status) != TF_OK) {
    fprintf(stderr, "%s: %s\n", what, TF_Message(status));
    exit(2);
  }
}

static TF_Output tensor_named(TF_Graph *graph, const char *spec) {
  char name[1024];
  int index = 0;
  strncpy(name, spec, sizeof(name) - 1);
  name[sizeof(name) - 1] = '\0';
  char *colon = strrchr(name, ':');
  if (colon != NULL) {
    *colon = '\0';
    index = atoi(colon + 1);
  }
  TF_Operation *operation = TF_GraphOperationByName(graph, name);
  if (operation == NULL) {
    fprintf(stderr, "no operation %s in the graph\n", name);
    exit(2);
  }
  TF_Output output = {operation, index};
  return output;
}

static void keep(void *data, size_t length, void *arg) { (void)data; (void)length; (void)arg; }

int main(int argc, char **argv) {
  if (argc < 10) {
    fprintf(stderr, "usage: %s EXPORT_DIR INPUT N H W C IN.f32 OUT_PREFIX OUTPUT...\n", argv[0]);
    return 2;
  }
  int64_t dims[4];
  size_t count = 1;
  for (int i = 0; i < 4; i++) {
    dims[i] = atoll(argv[3 + i]);
    count *= (size_t)dims[i];
  }
  float *pixels = malloc(count * sizeof(float) + 1);
  FILE *in = fopen(argv[7], "rb");
  if (in == NULL || fread(pixels, sizeof(float), count, in) != count) {
    fprintf(stderr, "cannot read %zu floats from %s\n", count, argv[7]);
    return 2;
  }
  fclose(in);

  TF_Status *status = TF_NewStatus();
  TF_Graph *graph = TF_NewGraph();
  TF_SessionOptions *options = TF_NewSessionOptions();
  const char *tags[] = {"serve"};
  TF_Session *session = TF_LoadSessionFromSavedModel(options, NULL, argv[1], tags, 1, graph, NULL, status);
  check(status, "loading the SavedModel");

  int n_outputs = argc - 9;
  TF_Output input = tensor_named(graph, argv[2]);
  TF_Output *outputs = malloc(sizeof(TF_Output) * n_outputs);
  TF_Tensor **values = calloc(n_outputs, sizeof(TF_Tensor *));
  for (int k = 0; k < n_outputs; k++) outputs[k] = tensor_named(graph, argv[9 + k]);
  TF_Tensor *images = TF_NewTensor(TF_FLOAT, dims, 4, pixels, count * sizeof(float), keep, NULL);
  TF_SessionRun(session, NULL, &input, &images, 1, outputs, values, n_outputs, NULL, 0, NULL, status);
  check(status, "running the signature");

  for (int k = 0; k < n_outputs; k++) {
    char path[4096];
    snprintf(path, sizeof(path), "%s.%d", argv[8], k);
    FILE *out = fopen(path, "wb");
    size_t bytes = TF_TensorByteSize(values[k]);
    if (out == NULL || fwrite(TF_TensorData(values[k]), 1, bytes, out) != bytes) {
      fprintf(stderr, "cannot write %s\n", path);
      return 2;
    }
    fclose(out);
    TF_DeleteTensor(values[k]);
  }
  TF_DeleteTensor(images);
  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  free(outputs);
  free(values);
  free(pixels);
  return 0;
}
