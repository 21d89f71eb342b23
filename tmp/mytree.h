


    // !!! This file is generated using emlearn !!!

    #include <stdint.h>
    

static inline int32_t mytree_tree_0(const float *features, int32_t features_length) {
          if (features[36] < 0.500000f) {
              if (features[28] < 5.500000f) {
                  if (features[37] < 0.500000f) {
                      if (features[6] < 1.000000f) {
                          if (features[51] < 14.500000f) {
                              return 2;
                          } else {
                              return 6;
                          }
                      } else {
                          return 5;
                      }
                  } else {
                      if (features[3] < 6.000000f) {
                          if (features[52] < 7.500000f) {
                              return 9;
                          } else {
                              return 4;
                          }
                      } else {
                          return 0;
                      }
                  }
              } else {
                  if (features[21] < 9.000000f) {
                      if (features[4] < 11.000000f) {
                          if (features[42] < 7.500000f) {
                              return 9;
                          } else {
                              return 6;
                          }
                      } else {
                          if (features[51] < 9.500000f) {
                              return 5;
                          } else {
                              return 2;
                          }
                      }
                  } else {
                      if (features[61] < 3.000000f) {
                          if (features[4] < 13.500000f) {
                              return 8;
                          } else {
                              return 5;
                          }
                      } else {
                          return 9;
                      }
                  }
              }
          } else {
              if (features[61] < 0.500000f) {
                  if (features[26] < 11.500000f) {
                      if (features[37] < 0.500000f) {
                          if (features[20] < 7.500000f) {
                              return 5;
                          } else {
                              if (features[36] < 12.500000f) {
                                  if (features[27] < 15.500000f) {
                                      if (features[17] < 3.500000f) {
                                          return 3;
                                      } else {
                                          return 9;
                                      }
                                  } else {
                                      return 8;
                                  }
                              } else {
                                  return 1;
                              }
                          }
                      } else {
                          if (features[53] < 3.500000f) {
                              if (features[10] < 0.500000f) {
                                  if (features[49] < 1.500000f) {
                                      return 1;
                                  } else {
                                      return 4;
                                  }
                              } else {
                                  if (features[25] < 6.500000f) {
                                      if (features[57] < 2.500000f) {
                                          return 7;
                                      } else {
                                          return 3;
                                      }
                                  } else {
                                      if (features[38] < 8.000000f) {
                                          return 7;
                                      } else {
                                          return 4;
                                      }
                                  }
                              }
                          } else {
                              if (features[6] < 8.500000f) {
                                  if (features[2] < 5.500000f) {
                                      if (features[59] < 7.500000f) {
                                          return 4;
                                      } else {
                                          return 7;
                                      }
                                  } else {
                                      return 3;
                                  }
                              } else {
                                  return 5;
                              }
                          }
                      }
                  } else {
                      if (features[2] < 4.500000f) {
                          if (features[5] < 7.500000f) {
                              return 4;
                          } else {
                              if (features[28] < 7.000000f) {
                                  if (features[41] < 1.000000f) {
                                      return 7;
                                  } else {
                                      return 6;
                                  }
                              } else {
                                  if (features[22] < 1.000000f) {
                                      if (features[36] < 12.000000f) {
                                          return 1;
                                      } else {
                                          return 4;
                                      }
                                  } else {
                                      return 9;
                                  }
                              }
                          }
                      } else {
                          if (features[21] < 5.000000f) {
                              if (features[60] < 14.000000f) {
                                  return 5;
                              } else {
                                  return 1;
                              }
                          } else {
                              if (features[34] < 15.500000f) {
                                  if (features[60] < 3.500000f) {
                                      return 7;
                                  } else {
                                      if (features[50] < 7.500000f) {
                                          return 9;
                                      } else {
                                          return 8;
                                      }
                                  }
                              } else {
                                  return 1;
                              }
                          }
                      }
                  }
              } else {
                  if (features[43] < 1.500000f) {
                      if (features[26] < 4.500000f) {
                          if (features[19] < 10.500000f) {
                              if (features[37] < 1.500000f) {
                                  return 8;
                              } else {
                                  if (features[30] < 5.000000f) {
                                      if (features[4] < 8.000000f) {
                                          return 3;
                                      } else {
                                          return 3;
                                      }
                                  } else {
                                      return 9;
                                  }
                              }
                          } else {
                              if (features[29] < 13.500000f) {
                                  if (features[55] < 1.000000f) {
                                      if (features[5] < 6.000000f) {
                                          return 3;
                                      } else {
                                          return 8;
                                      }
                                  } else {
                                      return 1;
                                  }
                              } else {
                                  return 9;
                              }
                          }
                      } else {
                          if (features[21] < 4.500000f) {
                              if (features[5] < 7.000000f) {
                                  if (features[12] < 15.500000f) {
                                      if (features[30] < 7.500000f) {
                                          return 1;
                                      } else {
                                          return 4;
                                      }
                                  } else {
                                      return 3;
                                  }
                              } else {
                                  if (features[10] < 8.500000f) {
                                      return 6;
                                  } else {
                                      return 5;
                                  }
                              }
                          } else {
                              if (features[20] < 14.500000f) {
                                  if (features[29] < 6.000000f) {
                                      if (features[54] < 3.000000f) {
                                          return 8;
                                      } else {
                                          return 3;
                                      }
                                  } else {
                                      if (features[42] < 9.000000f) {
                                          return 9;
                                      } else {
                                          return 8;
                                      }
                                  }
                              } else {
                                  if (features[59] < 6.500000f) {
                                      return 1;
                                  } else {
                                      if (features[21] < 14.000000f) {
                                          return 5;
                                      } else {
                                          return 9;
                                      }
                                  }
                              }
                          }
                      }
                  } else {
                      if (features[46] < 5.500000f) {
                          if (features[19] < 12.500000f) {
                              if (features[45] < 6.500000f) {
                                  if (features[54] < 0.500000f) {
                                      if (features[26] < 1.500000f) {
                                          return 2;
                                      } else {
                                          return 8;
                                      }
                                  } else {
                                      return 2;
                                  }
                              } else {
                                  if (features[33] < 2.500000f) {
                                      if (features[59] < 3.000000f) {
                                          return 1;
                                      } else {
                                          return 8;
                                      }
                                  } else {
                                      if (features[61] < 7.500000f) {
                                          return 4;
                                      } else {
                                          return 6;
                                      }
                                  }
                              }
                          } else {
                              if (features[38] < 0.500000f) {
                                  if (features[44] < 6.500000f) {
                                      if (features[37] < 3.500000f) {
                                          return 2;
                                      } else {
                                          return 8;
                                      }
                                  } else {
                                      if (features[52] < 12.500000f) {
                                          return 1;
                                      } else {
                                          return 1;
                                      }
                                  }
                              } else {
                                  if (features[13] < 11.500000f) {
                                      return 4;
                                  } else {
                                      if (features[62] < 0.500000f) {
                                          return 0;
                                      } else {
                                          return 1;
                                      }
                                  }
                              }
                          }
                      } else {
                          if (features[21] < 1.000000f) {
                              if (features[9] < 2.000000f) {
                                  if (features[54] < 1.500000f) {
                                      return 4;
                                  } else {
                                      return 6;
                                  }
                              } else {
                                  if (features[3] < 14.000000f) {
                                      return 8;
                                  } else {
                                      if (features[49] < 1.500000f) {
                                          return 3;
                                      } else {
                                          return 2;
                                      }
                                  }
                              }
                          } else {
                              if (features[26] < 3.500000f) {
                                  if (features[45] < 12.500000f) {
                                      return 2;
                                  } else {
                                      return 3;
                                  }
                              } else {
                                  if (features[46] < 8.500000f) {
                                      if (features[10] < 12.500000f) {
                                          return 4;
                                      } else {
                                          return 8;
                                      }
                                  } else {
                                      if (features[52] < 13.000000f) {
                                          return 9;
                                      } else {
                                          return 4;
                                      }
                                  }
                              }
                          }
                      }
                  }
              }
          }
        }
        

int32_t mytree_predict(const float *features, int32_t features_length) {

        int32_t votes[10] = {0,};
        int32_t _class = -1;

        _class = mytree_tree_0(features, features_length); votes[_class] += 1;
    
        int32_t most_voted_class = -1;
        int32_t most_voted_votes = 0;
        for (int32_t i=0; i<10; i++) {

            if (votes[i] > most_voted_votes) {
                most_voted_class = i;
                most_voted_votes = votes[i];
            }
        }
        return most_voted_class;
    }
    

int mytree_predict_proba(const float *features, int32_t features_length, float *out, int out_length) {

        int32_t _class = -1;

        for (int i=0; i<out_length; i++) {
            out[i] = 0.0f;
        }

        _class = mytree_tree_0(features, features_length); out[_class] += 1.0f;
    
        // compute mean
        for (int i=0; i<out_length; i++) {
            out[i] = out[i] / 1;
        }
        return 0;
    }
    

            int32_t
            predict_wrapper(const float *values, int length) {
                // Convert to whatever is needed for inline
                float features[64];
                for (int i=0; i<length; i++) {
                    features[i] = (float)values[i];
                }
                const int32_t out = mytree_predict(features, length);
                if (out < 0) {
                    return -out;
                }
                return out;
            }

            int
            predict_proba_wrapper(const float *values, int length, float *outputs, int n_outputs) {
                // Convert to whatever is needed for inline
                float features[64];
                for (int i=0; i<length; i++) {
                    features[i] = (float)values[i];
                }

                const int err =                     mytree_predict_proba(features, length, outputs, n_outputs);

                return err;
            }
            